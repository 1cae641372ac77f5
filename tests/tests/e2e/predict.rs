//! `ctctl predict` on a trained model: a dataset split, the same images as PNG files (the same
//! probabilities), a corrupt file (a row with the reason, the run goes on), and a real CT slice
//! (no patient attribute of it in the output).

use ctcluster_common::dataset::{load_manifest, load_shard};
use ctcluster_tests::fixtures::multi_frame_slice;
use ctcluster_tests::{Cluster, shared_data, spec, synthetic};
use ctctl::predict::{Output, predict, render};
use dicom_dictionary_std::tags;

fn write_png(path: &std::path::Path, side: u32, pixels: &[f32]) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), side, side);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let bytes: Vec<u8> = pixels.iter().map(|&v| v as u8).collect();
    enc.write_header()
        .unwrap()
        .write_image_data(&bytes)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_gives_evaluate_s_probabilities_on_raw_files_and_reports_bad_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synthetic("memory://predict/ds", 256, 12, 9).await;
    let cluster = Cluster::start("memory://predict/state", 1).await;
    let out = tmp.path().join("out").display().to_string();
    let status = cluster
        .run(&spec(
            "predict-model",
            ds.as_str(),
            &out,
            "batch_size: 64\nmax_steps: 8\nseed: 2\n",
        ))
        .await;
    cluster.stop().await;
    let model = status.model.clone();

    // The dataset's test split, row by row.
    let from_ds = predict(&model, &[ds.as_str().to_string()], "test")
        .await
        .unwrap();
    assert_eq!(from_ds.classes, ["normal", "lesion"]);
    assert_eq!(from_ds.predictions.len(), 12);
    assert!(
        from_ds
            .predictions
            .iter()
            .all(|r| r.error.is_none() && r.label.is_some())
    );

    // `evaluate` on the same split: the clinical metrics agree with the confusion matrix, and
    // nothing is NaN.
    let report = ctcluster_common::evaluate::evaluate(&model, ds.as_str(), "test")
        .await
        .unwrap();
    assert_eq!(report.samples, 12);
    assert_eq!(report.per_class.len(), 2);
    assert_eq!(report.sensitivity, report.per_class[1].recall);
    let c = &report.confusion;
    let (tp, fn_) = (c[1][1] as f64, c[1][0] as f64);
    assert_eq!(report.sensitivity, Some(tp / (tp + fn_)));
    if let (Some(auc), Some([lo, hi])) = (report.roc_auc, report.roc_auc_ci95) {
        assert!(lo <= auc && auc <= hi, "{lo} {auc} {hi}");
    }
    assert!((0.0..=1.0).contains(&report.ece.unwrap()));
    let figures = [report.balanced_accuracy, report.specificity, report.ece]
        .into_iter()
        .chain(
            report
                .per_class
                .iter()
                .flat_map(|c| [c.precision, c.recall, c.f1]),
        );
    for v in figures.flatten() {
        assert!(v.is_finite() && (0.0..=1.0).contains(&v), "{v}");
    }

    // The same images as PNG files, plus a corrupt one in the middle.
    let manifest = load_manifest(&ds).await.unwrap();
    let shard = load_shard(&ds, &manifest, "test", 0).await.unwrap();
    let dir = tmp.path().join("pngs");
    std::fs::create_dir_all(&dir).unwrap();
    for row in 0..shard.labels.len() {
        write_png(&dir.join(format!("x{row:02}.png")), 28, shard.image(row));
    }
    std::fs::write(dir.join("x05b.png"), b"\x89PNG but not really").unwrap();
    std::fs::write(dir.join("notes.txt"), b"not an image").unwrap();
    let from_files = predict(&model, &[dir.display().to_string()], "test")
        .await
        .unwrap();
    assert_eq!(
        from_files.predictions.len(),
        13,
        "12 images and the corrupt file"
    );
    let bad = &from_files.predictions[6];
    assert!(bad.input.ends_with("x05b.png") && bad.predicted.is_none());
    assert!(bad.error.as_deref().unwrap().contains("PNG"), "{bad:?}");
    let good: Vec<_> = from_files
        .predictions
        .iter()
        .filter(|r| r.error.is_none())
        .collect();
    for (a, b) in good.iter().zip(&from_ds.predictions) {
        assert_eq!(a.predicted, b.predicted);
        for (pa, pb) in a.probabilities.iter().zip(&b.probabilities) {
            assert!((pa - pb).abs() <= 1e-6, "{}: {pa} vs {pb}", a.input);
        }
        assert!(a.id.starts_with("img-") && a.id.len() == 20, "{}", a.id);
    }
    // Ids are stable: the same pixels give the same id.
    let again = predict(&model, &[good[0].input.clone()], "test")
        .await
        .unwrap();
    assert_eq!(again.predictions[0].id, good[0].id);
    // CSV: a header naming every class, a line per image.
    let csv = render(&from_files, Output::Csv);
    assert!(csv.starts_with("id,input,label,predicted,p_normal,p_lesion,error\n"));
    assert_eq!(csv.lines().count(), 14);

    // A missing input is a row too, and the others still come.
    let mixed = predict(
        &model,
        &["/no/such.png".into(), good[1].input.clone()],
        "test",
    )
    .await
    .unwrap();
    assert!(mixed.predictions[0].error.is_some());
    assert!(mixed.predictions[1].error.is_none());

    // A real CT slice, in a folder under a name made of its patient's: no attribute of the
    // patient, and not the file name, in the output.
    let Some(data) = shared_data() else {
        eprintln!("SKIPPED the DICOM part: ../shared/data is absent (CI always has it)");
        return;
    };
    let ct = data.join("dicom/CT_small.dcm");
    let scans = tmp.path().join("scans");
    std::fs::create_dir_all(&scans).unwrap();
    std::fs::copy(&ct, scans.join("Doe-Jane-MRN4711.dcm")).unwrap();
    let got = predict(&model, &[scans.display().to_string()], "test")
        .await
        .unwrap();
    assert_eq!(got.predictions.len(), 1);
    assert!(
        got.predictions[0].error.is_none(),
        "{:?}",
        got.predictions[0]
    );
    let obj = dicom_object::open_file(&ct).unwrap();
    let mut secrets: Vec<String> = [
        tags::PATIENT_NAME,
        tags::PATIENT_ID,
        tags::PATIENT_BIRTH_DATE,
        tags::INSTITUTION_NAME,
        tags::STUDY_INSTANCE_UID,
        tags::SERIES_INSTANCE_UID,
        tags::SOP_INSTANCE_UID,
    ]
    .iter()
    .filter_map(|&t| {
        obj.get(t)?
            .to_str()
            .ok()
            .map(|s| s.trim_matches(['\0', ' ']).to_string())
    })
    .filter(|v| v.len() >= 4)
    .collect();
    assert!(secrets.len() >= 5, "{secrets:?}");
    secrets.extend(["Doe-Jane", "MRN4711"].map(String::from));
    for text in [render(&got, Output::Csv), render(&got, Output::Json)] {
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{s:?} appears in:\n{text}");
        }
    }

    // A multi-frame object (a cine loop of the slice and a dimmer copy): a row per frame.
    let cine_path = tmp.path().join("cine.dcm");
    multi_frame_slice(&ct, &cine_path, "1.2.3.44", &[(1, 1), (1, 2)]);
    let got = predict(&model, &[cine_path.display().to_string()], "test")
        .await
        .unwrap();
    let inputs: Vec<&str> = got.predictions.iter().map(|r| r.input.as_str()).collect();
    assert_eq!(got.predictions.len(), 2, "{inputs:?}");
    assert!(inputs[0].ends_with("cine.dcm#frame1") && inputs[1].ends_with("cine.dcm#frame2"));
    assert!(got.predictions.iter().all(|r| r.error.is_none()), "{got:?}");
    assert_ne!(got.predictions[0].id, got.predictions[1].id);
    // The first frame is the slice itself: the same id and probabilities as the file alone.
    let single = predict(&model, &[ct.display().to_string()], "test")
        .await
        .unwrap();
    assert_eq!(got.predictions[0].id, single.predictions[0].id);
    assert_eq!(
        got.predictions[0].probabilities,
        single.predictions[0].probabilities
    );
}
