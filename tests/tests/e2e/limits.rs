//! Hard limits, on a real coordinator process: each crafted input (a forged row count, a job
//! too large for the coordinator's memory, too many jobs, an oversized checkpoint file, a job
//! that can never produce a finite gradient, a flood of idle connections) gets a clear error
//! or a failed job with the reason, while a healthy job beside them ends bit-identical to a
//! calm run; the coordinator stays under its memory budget, and after a SIGKILL following each
//! of them it comes back without replaying any of it (a job whose start keeps taking the
//! process down is failed).

use std::path::Path;
use std::time::Duration;

use ctcluster_proto as pb;
use ctcluster_tests::{
    Proc, client_for, final_checkpoint, has_ended, job_status, job_until, restart_coordinator,
    spec, start_coordinator, submit_as, synthetic,
};
use ctctl::Target;
use tonic::Code;

/// The coordinator's memory budget in this test, MiB.
const BUDGET_MB: u64 = 256;
/// Its connection limit.
const MAX_CONNECTIONS: usize = 16;

/// Starts the coordinator of this test on `port` (0: one it picks); returns it and its port.
fn coordinator(port: u16, state: &Path) -> (Proc, u16) {
    let (budget, connections) = (BUDGET_MB.to_string(), MAX_CONNECTIONS.to_string());
    let extra = [
        "--max-job-memory-mb",
        "64",
        "--memory-budget-mb",
        &budget,
        "--max-jobs-per-user",
        "3",
        "--max-connections",
        &connections,
        "--idle-timeout-s",
        "2",
    ];
    if port == 0 {
        let (p, listening) = start_coordinator(state, &extra);
        (p, listening.port)
    } else {
        (restart_coordinator(port, state, &extra), port)
    }
}

/// Waits (bounded) until the job's record in storage, what a restarted coordinator reads,
/// says `state`.
async fn recorded(state_dir: &Path, id: &str, state: &str) {
    let record = state_dir.join("jobs").join(format!("{id}.json"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&record)
        .unwrap_or_default()
        .contains(&format!("\"state\": \"{state}\""))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never recorded as {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn refused(what: &str, r: Result<String, tonic::Status>, code: Code, needles: &[&str]) {
    let e = r.expect_err(what);
    assert_eq!(e.code(), code, "{what}: {e:?}");
    for n in needles {
        assert!(
            e.message().contains(n),
            "{what}: {:?} lacks {n:?}",
            e.message()
        );
    }
    println!("{what}: {:?} {}", e.code(), e.message());
}

/// A process's figure from /proc/PID/status, in kB.
fn proc_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} for {pid}"))
}

/// SIGKILLs the coordinator and starts it again on the same state; it must come up and serve.
/// Returns the peak resident memory (kB) of the process that was killed.
async fn restart(coord: &mut Proc, port: u16, state: &Path, target: &Target) -> u64 {
    let peak = proc_kb(coord.0.id(), "VmHWM:");
    coord.kill();
    *coord = coordinator(port, state).0;
    client_for(target)
        .await
        .list_jobs(pb::ListJobsRequest {})
        .await
        .expect("the restarted coordinator serves");
    peak
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_holds_and_a_healthy_job_beside_them_is_unharmed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("ds");
    synthetic(data.to_str().unwrap(), 400, 16, 4).await;
    let state = root.join("state");
    let out = root.join("out").display().to_string();
    let (mut coord, port) = coordinator(0, &state);
    let url = format!("http://127.0.0.1:{port}");
    let target = Target::insecure(&url);
    let _worker = Proc::start(
        "ctcluster-worker",
        &["--coordinator", &url, "--insecure"],
        &[],
    );
    let ds = data.to_str().unwrap();
    let healthy = spec(
        "healthy",
        ds,
        &out,
        "epochs: 3\nbatch_size: 64\nseed: 7\ncheckpoint:\n  every_steps: 3\n",
    );
    let h = submit_as(&target, healthy.clone()).await.unwrap();

    // A manifest claiming far more rows than its shard holds (per-class counts made to agree).
    let forged = root.join("forged");
    copy_dir(&data, &forged);
    let mpath = forged.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    let train = &mut m["splits"]["train"];
    // Under the per-shard cap (u32 rows), so it is the shard file's size that gives it away.
    let claimed = 1_000_000_000u64;
    let real = train["shards"][0]["rows"].as_u64().unwrap();
    train["shards"][0]["rows"] = claimed.into();
    train["shards"][0]["per_class"] = serde_json::json!([claimed, 0]);
    train["rows"] = (train["rows"].as_u64().unwrap() - real + claimed).into();
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    refused(
        "a forged row count",
        submit_as(
            &target,
            spec("forged", forged.to_str().unwrap(), &out, "epochs: 1\n"),
        )
        .await,
        Code::InvalidArgument,
        &["train-00000.arrow", "1000000000 rows", "but the file has"],
    );
    let mut peak_kb = restart(&mut coord, port, &state, &target).await;

    // Jobs too large for the coordinator's memory, refused at submit.
    refused(
        "a model too large for the job memory limit",
        submit_as(
            &target,
            spec("huge", ds, &out, "preprocess:\n  resize: [512, 512]\n"),
        )
        .await,
        Code::ResourceExhausted,
        &["job memory", "MiB"],
    );
    refused(
        "thousands of micro-batches a step",
        submit_as(
            &target,
            spec("tiny", ds, &out, "batch_size: 4096\nmicro_batch_size: 1\n"),
        )
        .await,
        Code::ResourceExhausted,
        &["job memory", "micro_batch_size"],
    );
    peak_kb = peak_kb.max(restart(&mut coord, port, &state, &target).await);

    // A checkpoint file far larger than its model, refused before it is read.
    let first_ck = job_until(&target, &h, |s| !s.checkpoint.is_empty())
        .await
        .checkpoint;
    let big = root.join("bigck");
    copy_dir(Path::new(first_ck.trim_start_matches("file://")), &big);
    std::fs::File::options()
        .write(true)
        .open(big.join("adam_m1.bin"))
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    refused(
        "an oversized checkpoint file",
        submit_as(
            &target,
            spec(
                "bigck",
                ds,
                &out,
                &format!(
                    "epochs: 3\nbatch_size: 64\nseed: 7\nresume_from: {}\n",
                    big.display()
                ),
            ),
        )
        .await,
        Code::InvalidArgument,
        &["adam_m1.bin", "more than the"],
    );
    peak_kb = peak_kb.max(restart(&mut coord, port, &state, &target).await);

    // A spec that passes validation but can never give a finite gradient fails, bounded.
    let nan = submit_as(
        &target,
        spec(
            "never-finite",
            ds,
            &out,
            "preprocess:\n  normalize: {mean: 0.0, std: 1.0e-38}\n",
        ),
    )
    .await
    .expect("the spec itself is valid");
    let s = job_until(&target, &nan, has_ended).await;
    assert_eq!(s.state, pb::JobState::Failed as i32, "{s:?}");
    assert!(s.message.contains("kept failing"), "{}", s.message);
    assert!(s.rejected_results <= 9, "{} rejections", s.rejected_results);
    println!(
        "never-finite job: failed after {} rejections: {}",
        s.rejected_results, s.message
    );
    recorded(&state, &nan, "failed").await;
    peak_kb = peak_kb.max(restart(&mut coord, port, &state, &target).await);

    // Jobs per user: long jobs beside the healthy one until one is refused, at the fourth
    // unfinished job at the latest.
    let long = spec("long", ds, &out, "epochs: 1000\nbatch_size: 32\n");
    let mut longs = Vec::new();
    let refusal = loop {
        match submit_as(&target, long.clone()).await {
            Ok(id) => {
                longs.push(id);
                assert!(longs.len() <= 3, "a fourth unfinished job was accepted");
            }
            Err(e) => break e,
        }
    };
    refused(
        "one unfinished job too many",
        Err(refusal),
        Code::ResourceExhausted,
        &["jobs per user"],
    );
    peak_kb = peak_kb.max(restart(&mut coord, port, &state, &target).await);

    // A flood of idle connections: at most MAX_CONNECTIONS are taken in, the idle ones are
    // closed, and the coordinator serves again.
    let pid = coord.0.id();
    let fds_before = open_fds(pid);
    let mut flood = Vec::new();
    for _ in 0..64 {
        flood.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds = open_fds(pid);
    assert!(
        fds <= fds_before + MAX_CONNECTIONS,
        "{fds} open files with 64 connections knocking (limit {MAX_CONNECTIONS}, {fds_before} before)"
    );
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::AsyncReadExt;
        let mut n = 0;
        for c in &mut flood {
            let mut b = [0u8; 64];
            // The server's settings frame, then EOF once the idle timeout closes it.
            while c.read(&mut b).await.map(|k| k > 0).unwrap_or(false) {}
            n += 1;
        }
        n
    })
    .await
    .expect("idle connections are closed");
    assert_eq!(closed, 64);
    drop(flood);
    client_for(&target)
        .await
        .list_jobs(pb::ListJobsRequest {})
        .await
        .expect("serving after the flood");
    for id in &longs {
        ctctl::jobs::cancel(&target, id).await.unwrap();
    }
    for id in &longs {
        recorded(&state, id, "cancelled").await;
    }

    // The healthy job ends as a calm run would; the coordinator stayed under its budget.
    let disturbed = job_until(&target, &h, has_ended).await;
    assert_eq!(
        disturbed.state,
        pb::JobState::Succeeded as i32,
        "{}",
        disturbed.message
    );
    let peak_kb = peak_kb.max(proc_kb(pid, "VmHWM:"));
    println!(
        "coordinator peak resident memory over its six lives: {} MiB (budget {BUDGET_MB} MiB)",
        peak_kb / 1024
    );
    assert!(peak_kb < BUDGET_MB * 1024, "peak {peak_kb} kB");

    recorded(&state, &h, "succeeded").await;
    // A job record whose start took the process down three times running.
    let record = state.join("jobs").join(format!("{h}.json"));
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let crashing = "job-c0ffeec0ffee";
    rec["id"] = crashing.into();
    rec["state"] = "running".into();
    rec["unfinished_starts"] = 3.into();
    std::fs::write(
        state.join("jobs").join(format!("{crashing}.json")),
        serde_json::to_vec(&rec).unwrap(),
    )
    .unwrap();

    // SIGKILL and restart: nothing of the above is replayed.
    coord.kill();
    let _coord = coordinator(port, &state);
    let s = job_status(&target, crashing).await;
    assert_eq!(s.state, pb::JobState::Failed as i32, "{s:?}");
    assert!(s.message.contains("not started again"), "{}", s.message);
    let s = job_status(&target, &nan).await;
    assert_eq!(s.state, pb::JobState::Failed as i32, "not replayed: {s:?}");
    for id in &longs {
        assert_eq!(
            job_status(&target, id).await.state,
            pb::JobState::Cancelled as i32
        );
    }
    let calm = submit_as(&target, healthy).await.unwrap();
    let calm = job_until(&target, &calm, has_ended).await;
    assert_eq!(
        calm.state,
        pb::JobState::Succeeded as i32,
        "{}",
        calm.message
    );
    let (a, b) = (
        final_checkpoint(&disturbed).await,
        final_checkpoint(&calm).await,
    );
    assert!(
        a.params == b.params && a.adam == b.adam,
        "the hostile inputs changed the healthy job's result"
    );
}
