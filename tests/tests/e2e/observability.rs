//! Seeing inside a job: one OpenTelemetry trace across ctctl, the coordinator and the workers
//! (real processes, a real OTLP receiver), and `ctctl report`'s charts.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use ctcluster_proto as pb;
use ctcluster_tests::otlp::{OtlpReceiver, ReceivedSpan};
use ctcluster_tests::{
    Cluster, Proc, binary, spec, start_coordinator_env, start_worker, synthetic,
};

/// Steps after the first epoch that the coordinator traces (every Nth).
const EVERY: u64 = 4;

fn children<'a>(spans: &'a [ReceivedSpan], parent: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.parent_id == parent.span_id)
        .collect()
}

fn names(spans: &[&ReceivedSpan]) -> BTreeSet<String> {
    spans.iter().map(|s| s.name.clone()).collect()
}

#[test]
fn one_trace_spans_ctctl_the_coordinator_and_every_worker() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = rt.block_on(OtlpReceiver::start());
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().display().to_string();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_string()),
    ];
    let status = Command::new(binary("ctctl"))
        .args([
            "dataset",
            "synth",
            "--kind",
            "lesion",
            "--out",
            &format!("{root}/ds"),
        ])
        .args(["--train", "700", "--test", "40", "--seed", "3"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");

    let (mut coordinator, listening) = start_coordinator_env(
        &tmp.path().join("state"),
        &["--trace-every-steps", &EVERY.to_string()],
        &otel,
    );
    let url = format!("http://127.0.0.1:{}", listening.port);
    let mut workers: Vec<Proc> = (0..2)
        .map(|i| start_worker(&url, &format!("traced-{i}"), &[], &otel))
        .collect();
    let spec_file = tmp.path().join("job.yaml");
    std::fs::write(
        &spec_file,
        spec(
            "traced",
            &format!("{root}/ds"),
            &format!("{root}/out"),
            "epochs: 2\nbatch_size: 64\nmicro_batch_size: 16\nmin_workers: 2\n",
        ),
    )
    .unwrap();
    let out = Command::new(binary("ctctl"))
        .args(["--insecure", "--coordinator", &url, "submit", "--watch"])
        .arg(&spec_file)
        .envs(otel.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job_id = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    // Exiting flushes each process's last spans.
    for w in &mut workers {
        w.terminate("worker");
    }
    coordinator.terminate("coordinator");
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = receiver.spans();
        if spans.iter().any(|s| s.name == "job") || Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    rt.block_on(receiver.stop());

    // One trace, from three kinds of process.
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["ctctl", "ctcluster-coordinator", "ctcluster-worker"]),
    );
    let submit = spans
        .iter()
        .find(|s| s.name == "submit" && s.service == "ctctl")
        .expect("ctctl's submit span");
    assert!(submit.parent_id.is_empty(), "submit is the root");
    assert_eq!(submit.attr("job.id"), Some(job_id.as_str()));
    for s in &spans {
        assert_eq!(
            s.trace_id, submit.trace_id,
            "{} of {} in another trace",
            s.name, s.service
        );
    }
    let by_id: BTreeMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for s in spans.iter().filter(|s| !s.parent_id.is_empty()) {
        assert!(
            by_id.contains_key(s.parent_id.as_str()),
            "{} of {} has a parent that was never exported",
            s.name,
            s.service
        );
    }

    // submit -> job -> epoch -> step -> (reduce, optimizer, publish, micro_batch -> ...).
    let jobs = children(&spans, submit);
    assert_eq!(names(&jobs), BTreeSet::from(["job".to_string()]));
    let job = jobs[0];
    assert_eq!(job.service, "ctcluster-coordinator");
    assert_eq!(job.attr("job.id"), Some(job_id.as_str()));
    assert_eq!(job.attr("state"), Some("succeeded"));
    let epochs: Vec<_> = children(&spans, job)
        .into_iter()
        .filter(|s| s.name == "epoch")
        .collect();
    assert_eq!(epochs.len(), 2);
    let export: Vec<_> = children(&spans, job)
        .into_iter()
        .filter(|s| s.name == "export")
        .collect();
    assert_eq!(export.len(), 1, "the job's end (export) is traced");
    assert!(
        children(&spans, export[0])
            .iter()
            .any(|s| s.name == "export_model"),
        "the model export is traced"
    );

    let mut traced_steps = BTreeMap::new();
    let mut step_workers = BTreeSet::new();
    // Per worker: (forward_backward start, push end) of each traced micro-batch.
    let mut timelines: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for epoch in &epochs {
        let e: u32 = epoch.attr("epoch").unwrap().parse().unwrap();
        let kids = children(&spans, epoch);
        let evals: Vec<_> = kids.iter().filter(|s| s.name == "evaluate").collect();
        assert_eq!(evals.len(), 1, "one evaluation per epoch");
        let eval_batches = children(&spans, evals[0]);
        assert!(!eval_batches.is_empty());
        assert!(eval_batches.iter().all(|s| s.name == "micro_batch"
            && s.attr("kind") == Some("eval")
            && s.service == "ctcluster-worker"));
        for step in kids.iter().filter(|s| s.name == "step") {
            assert_eq!(step.attr("job.id"), Some(job_id.as_str()));
            let n: u64 = step.attr("step").unwrap().parse().unwrap();
            traced_steps.insert(n, e);
            let parts = children(&spans, step);
            let got = names(&parts);
            for want in ["reduce", "optimizer", "publish", "micro_batch"] {
                assert!(got.contains(want), "step {n} lacks {want}: {got:?}");
            }
            let batches: Vec<_> = parts.iter().filter(|s| s.name == "micro_batch").collect();
            // Together the micro-batches cover the step's samples (the last step of an
            // epoch is shorter).
            let covered: u64 = batches
                .iter()
                .map(|b| b.attr("samples").unwrap().parse::<u64>().unwrap())
                .sum();
            assert!(
                covered >= step.attr("samples").unwrap().parse().unwrap(),
                "step {n}"
            );
            for b in batches {
                assert_eq!(b.service, "ctcluster-worker");
                assert_eq!(b.attr("job.id"), Some(job_id.as_str()));
                assert_eq!(b.attr("step"), Some(n.to_string().as_str()));
                step_workers.insert(b.attr("worker.id").unwrap().to_string());
                let stage_spans = children(&spans, b);
                let stages = names(&stage_spans);
                for want in ["fetch", "preprocess", "forward_backward", "push"] {
                    assert!(
                        stages.contains(want),
                        "micro-batch lacks {want}: {stages:?}"
                    );
                }
                let find = |name: &str| stage_spans.iter().find(|s| s.name == name).unwrap();
                timelines
                    .entry(b.attr("worker.id").unwrap().to_string())
                    .or_default()
                    .push((find("forward_backward").start_ns, find("push").end_ns));
            }
        }
    }
    assert_eq!(step_workers.len(), 2, "both workers' spans join the trace");
    // A worker that already holds its next task computes it while the previous result is
    // still being pushed: some push ends after the same worker's next computation began.
    let overlapped = timelines.values_mut().any(|t| {
        t.sort();
        t.windows(2).any(|w| w[1].0 < w[0].1)
    });
    assert!(overlapped, "no push overlapped the next computation");
    // The sampling rule: every step of epoch 0, then every EVERY-th step.
    let first_epoch_steps = traced_steps.values().filter(|e| **e == 0).count() as u64;
    assert!(
        first_epoch_steps >= 9,
        "{first_epoch_steps} steps traced in epoch 0"
    );
    assert_eq!(
        traced_steps
            .keys()
            .take(first_epoch_steps as usize)
            .copied()
            .collect::<Vec<_>>(),
        (0..first_epoch_steps).collect::<Vec<_>>()
    );
    let later: Vec<u64> = traced_steps
        .iter()
        .filter(|(_, e)| **e == 1)
        .map(|(s, _)| *s)
        .collect();
    let expected: Vec<u64> = (first_epoch_steps..2 * first_epoch_steps)
        .filter(|s| s % EVERY == 0)
        .collect();
    assert_eq!(later, expected);
    assert!(
        spans.iter().any(|s| s.name == "checkpoint"),
        "checkpoints are always traced"
    );
}

fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_writes_charts_and_a_page_that_shows_them() {
    let ds = synthetic("memory://report/ds", 900, 40, 5).await;
    let cluster = Cluster::start("memory://report/state", 2).await;
    let s = cluster
        .run(&spec(
            "report",
            ds.as_str(),
            "memory://report/out",
            "epochs: 4\nbatch_size: 64\n",
        ))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let out = ctctl::report::report(&cluster.target, &s.id, dir.path())
        .await
        .unwrap();
    assert!(out.contains("index.html"), "{out}");
    let mut c = cluster.client().await;
    let report = c
        .get_job_report(pb::GetJobRequest {
            job_id: s.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.history.len(), 4);
    assert!(report.loss_curve.len() as u64 >= s.total_steps.min(100));
    // The confusion counts cover the validation hold-out once.
    assert_eq!(report.classes.len(), 2);
    let total: u64 = report.val_confusion.iter().sum();
    let correct = report.val_confusion[0] + report.val_confusion[3];
    let acc = s.metrics.unwrap().val_accuracy.unwrap();
    assert!(total > 0);
    assert!((correct as f64 / total as f64 - acc).abs() < 1e-9);

    for name in ["loss.png", "accuracy.png", "confusion.png"] {
        let bytes = std::fs::read(dir.path().join(name)).unwrap();
        let (w, h, pixels) = decode_png(&bytes);
        assert!(w >= 300 && h >= 200, "{name} is {w}x{h}");
        let colours: BTreeSet<&[u8]> = pixels.chunks(3).collect();
        let inked = pixels.chunks(3).filter(|p| p != &[255, 255, 255]).count();
        assert!(colours.len() >= 4, "{name} has {} colours", colours.len());
        assert!(
            inked * 50 > pixels.len() / 3,
            "{name}: only {inked} of {} pixels drawn",
            pixels.len() / 3
        );
    }
    let html = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 3);
    assert!(html.contains(&s.id));
    assert!(
        !html.contains("src=\"http"),
        "the page needs nothing from the network"
    );
    cluster.stop().await;
}
