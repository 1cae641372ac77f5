//! `ctctl ingest`: every source type, DICOM Hounsfield units and de-identification, and the
//! cleaning report, on files the tests write and the real CT slice in ../shared/data.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ctcluster_common::dataset::{Manifest, PixelType, load_manifest, load_shard};
use ctcluster_common::storage::StoreUrl;
use ctcluster_tests::fixtures::{jpeg, multi_frame_slice, npy, npz, pattern, png, png_header_only};
use ctcluster_tests::shared_data;
use ctctl::ingest::{IngestArgs, IngestReport, IngestSource, OnShape, Reason};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;

fn args(out: &Path) -> IngestArgs {
    IngestArgs {
        out: out.display().to_string(),
        shard_rows: 2048,
        size: None,
        on_shape: OnShape::Resize,
        classes: None,
        val_fraction: 0.0,
        test_fraction: 0.0,
        split_seed: 0,
        encrypt_key: None,
    }
}

async fn ingest(source: IngestSource) -> (IngestReport, Manifest, StoreUrl) {
    let out = match &source {
        IngestSource::Npy { args, .. }
        | IngestSource::Npz { args, .. }
        | IngestSource::Folder { args, .. }
        | IngestSource::Dicom { args, .. } => args.out.clone(),
    };
    let report = ctctl::ingest::ingest_report(source).await.expect("ingest");
    let url = StoreUrl::parse(&out).unwrap();
    let manifest = load_manifest(&url).await.expect("manifest");
    (report, manifest, url)
}

/// Every (split, id) -> pixels of a dataset.
async fn rows(url: &StoreUrl, m: &Manifest) -> BTreeMap<(String, String), (u32, Vec<f32>)> {
    let mut out = BTreeMap::new();
    for (split, info) in &m.splits {
        for shard in 0..info.shards.len() {
            let s = load_shard(url, m, split, shard).await.unwrap();
            for (row, id) in s.ids.iter().enumerate() {
                out.insert(
                    (split.clone(), id.clone()),
                    (s.labels[row], s.image(row).to_vec()),
                );
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_type_ingests() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();

    // A pair of .npy files (the original article's layout).
    let images: Vec<u8> = (0..10u32)
        .flat_map(|i| pattern(12, 12, i, 255))
        .map(|v| v as u8)
        .collect();
    let labels: Vec<u8> = (0..10i64).flat_map(|i| (i % 2).to_le_bytes()).collect();
    std::fs::write(t.join("x.npy"), npy("|u1", &[10, 12, 12], &images)).unwrap();
    std::fs::write(t.join("y.npy"), npy("<i8", &[10], &labels)).unwrap();
    let mut a = args(&t.join("npy-ds"));
    a.test_fraction = 0.3;
    let (report, m, url) = ingest(IngestSource::Npy {
        images: t.join("x.npy"),
        labels: t.join("y.npy"),
        args: a,
    })
    .await;
    assert_eq!(report.written.values().sum::<u64>(), 10);
    assert_eq!((m.image.height, m.image.pixel_type), (12, PixelType::U8));
    assert_eq!(m.classes, vec!["0", "1"]);
    let all = rows(&url, &m).await;
    let (_, (label, px)) = all.iter().find(|((_, id), _)| id == "img-000003").unwrap();
    assert_eq!(*label, 1);
    assert_eq!(
        px[..12],
        images[3 * 144..3 * 144 + 12]
            .iter()
            .map(|&b| f32::from(b))
            .collect::<Vec<_>>()[..]
    );

    // A MedMNIST-style .npz: its splits are kept.
    let img = |n: usize, seed: u32| -> Vec<u8> {
        (0..n as u32)
            .flat_map(|i| pattern(10, 10, seed + i, 200))
            .map(|v| v as u8)
            .collect()
    };
    npz(
        &t.join("m.npz"),
        &[
            ("train_images", npy("|u1", &[8, 10, 10], &img(8, 0))),
            (
                "train_labels",
                npy("|u1", &[8, 1], &[0, 1, 2, 0, 1, 2, 0, 1]),
            ),
            ("test_images", npy("|u1", &[4, 10, 10], &img(4, 100))),
            ("test_labels", npy("|u1", &[4, 1], &[2, 1, 0, 2])),
        ],
    );
    let (_, m, _) = ingest(IngestSource::Npz {
        file: t.join("m.npz"),
        args: args(&t.join("npz-ds")),
    })
    .await;
    assert_eq!((m.splits["train"].rows, m.splits["test"].rows), (8, 4));
    assert_eq!(m.classes.len(), 3);

    // A folder of 8-bit images: grey PNG, RGB PNG (converted to grey), JPEG.
    let f8 = t.join("f8");
    for c in ["cat-a", "cat-b"] {
        std::fs::create_dir_all(f8.join(c)).unwrap();
    }
    for i in 0..3 {
        png(
            &f8.join(format!("cat-a/{i}.png")),
            16,
            16,
            1,
            false,
            &pattern(16, 16, i, 255),
        );
    }
    let rgb: Vec<u16> = pattern(16, 16, 9, 255)
        .iter()
        .flat_map(|&v| [v, v, v])
        .collect();
    png(&f8.join("cat-b/rgb.png"), 16, 16, 3, false, &rgb);
    let grey: Vec<u8> = pattern(16, 16, 11, 255).iter().map(|&v| v as u8).collect();
    jpeg(&f8.join("cat-b/scan.jpg"), 16, 16, &grey);
    let (report, m, url) = ingest(IngestSource::Folder {
        dir: f8.clone(),
        args: args(&t.join("f8-ds")),
    })
    .await;
    assert_eq!(report.written["train"], 5, "{report:?}");
    assert_eq!((m.image.channels, m.image.pixel_type), (1, PixelType::U8));
    assert_eq!(m.classes, vec!["cat-a", "cat-b"]);
    assert!(report.modified.iter().any(|x| x.source == "cat-b/rgb.png"));
    let all = rows(&url, &m).await;
    // Sample ids come from the pixels: nothing of a file's name or folder.
    assert!(
        all.keys()
            .all(|(_, id)| id.starts_with("img-") && id.len() == 20),
        "{:?}",
        all.keys()
    );
    let want_rgb: Vec<f32> = pattern(16, 16, 9, 255)
        .iter()
        .map(|&v| f32::from(v))
        .collect();
    let cat_b: Vec<&Vec<f32>> = all
        .values()
        .filter(|(l, _)| *l == 1)
        .map(|(_, px)| px)
        .collect();
    assert_eq!(cat_b.len(), 2);
    assert!(cat_b.contains(&&want_rgb), "the RGB PNG, converted to grey");
    let jpeg_row = cat_b.into_iter().find(|px| **px != want_rgb).unwrap();
    let worst = jpeg_row
        .iter()
        .zip(&grey)
        .map(|(a, &b)| (a - f32::from(b)).abs())
        .fold(0.0, f32::max);
    assert!(
        worst <= 8.0,
        "JPEG decoded within 8 grey levels of its source: {worst}"
    );

    // 16-bit PNGs keep their 16-bit values.
    let f16 = t.join("f16");
    for (c, seed) in [("low", 0), ("high", 1)] {
        std::fs::create_dir_all(f16.join(c)).unwrap();
        for i in 0..2 {
            png(
                &f16.join(format!("{c}/{i}.png")),
                8,
                8,
                1,
                true,
                &pattern(8, 8, seed * 10 + i, 4000),
            );
        }
    }
    let (_, m, url) = ingest(IngestSource::Folder {
        dir: f16,
        args: args(&t.join("f16-ds")),
    })
    .await;
    assert_eq!(m.image.pixel_type, PixelType::U16);
    let all = rows(&url, &m).await;
    let want: Vec<f32> = pattern(8, 8, 11, 4000)
        .iter()
        .map(|&v| f32::from(v))
        .collect();
    assert!(
        all.values().any(|(_, px)| *px == want),
        "a 16-bit PNG keeps its values"
    );
    assert!(want.iter().any(|&v| v > 255.0));

    // The real CT slice: stored as Hounsfield units = raw x slope + intercept.
    let Some(data) = shared_data() else {
        eprintln!("SKIPPED the DICOM part: ../shared/data is absent (CI always has it)");
        return;
    };
    let ct = data.join("dicom/CT_small.dcm");
    let dir = t.join("dcm");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&ct, dir.join("CT_small.dcm")).unwrap();
    std::fs::write(t.join("labels.csv"), "file,label\nCT_small.dcm,normal\n").unwrap();
    let mut a = args(&t.join("dcm-ds"));
    a.classes = Some(vec!["normal".into(), "haemorrhage".into()]);
    let (_, m, url) = ingest(IngestSource::Dicom {
        dir,
        labels: t.join("labels.csv"),
        deid_key: Some(key_file(t, "k1", 1)),
        keep_identifiers: false,
        allow_burned_in: false,
        allow_secondary_capture: false,
        args: a,
    })
    .await;
    assert_eq!(
        (m.image.height, m.image.width, m.image.pixel_type),
        (128, 128, PixelType::I16)
    );
    let obj = dicom_object::open_file(&ct).unwrap();
    let num = |t| {
        obj.element(t)
            .unwrap()
            .to_str()
            .unwrap()
            .trim()
            .parse::<f32>()
            .unwrap()
    };
    let (slope, intercept) = (num(tags::RESCALE_SLOPE), num(tags::RESCALE_INTERCEPT));
    assert_eq!((slope, intercept), (1.0, -1024.0));
    let raw = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    assert_eq!(
        obj.element(tags::PIXEL_REPRESENTATION)
            .unwrap()
            .to_int::<u16>()
            .unwrap(),
        1
    );
    let expected: Vec<f32> = raw
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) * slope + intercept)
        .collect();
    let all = rows(&url, &m).await;
    let (_, (_, hu)) = all.iter().next().unwrap();
    assert_eq!(hu, &expected, "every pixel is raw x slope + intercept");
    let air = hu.iter().filter(|&&v| v < -500.0).count();
    let bone = hu.iter().filter(|&&v| v > 300.0).count();
    assert!(
        air > 1000 && bone > 10,
        "a CT slice in HU has air around the body and bone: {air} pixels below -500 HU, {bone} above 300"
    );
}

fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(format!("{name}.key"));
    std::fs::write(&path, hex_of(&[byte; 32])).unwrap();
    path
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every file under `dir`, recursively.
fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Writes a copy of the CT slice as another patient's slice, with pixels made unique.
fn patient_slice(ct: &Path, out: &Path, patient: usize, slice: usize) {
    let mut obj = dicom_object::open_file(ct).unwrap();
    obj.put(DataElement::new(
        tags::PATIENT_ID,
        VR::LO,
        PrimitiveValue::from(format!("MRN-40{patient}17")),
    ));
    obj.put(DataElement::new(
        tags::PATIENT_NAME,
        VR::PN,
        PrimitiveValue::from(format!("Doe{patient}^Jane")),
    ));
    obj.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(format!("1.2.826.0.1.3680043.99.{patient}.{slice}")),
    ));
    let mut px = obj
        .element(tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .to_vec();
    px[0] = px[0].wrapping_add((patient * 10 + slice + 1) as u8);
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::from(px),
    ));
    obj.write_to_file(out).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dicom_ingest_leaves_no_identifier_and_keeps_patients_in_one_split() {
    let Some(data) = shared_data() else {
        eprintln!("SKIPPED: ../shared/data is absent (CI always has it)");
        return;
    };
    let ct = data.join("dicom/CT_small.dcm");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = t.join("study");
    std::fs::create_dir_all(dir.join("p")).unwrap();
    std::fs::copy(&ct, dir.join("CT_small.dcm")).unwrap();
    let mut csv = String::from("file,label\nCT_small.dcm,normal\n");
    for p in 0..6 {
        for s in 0..2 {
            let name = format!("p/{p}-{s}.dcm");
            patient_slice(&ct, &dir.join(&name), p, s);
            csv.push_str(&format!(
                "{name},{}\n",
                if p % 2 == 0 { "normal" } else { "haemorrhage" }
            ));
        }
    }
    // Not an image, a cine loop (two frames: two samples), a truncated file, an unlabelled
    // slice.
    let mut report_obj = dicom_object::open_file(&ct).unwrap();
    report_obj.remove_element(tags::PIXEL_DATA);
    report_obj.write_to_file(dir.join("sr.dcm")).unwrap();
    // Frames that differ from each other and from the slice they are made of (identical
    // images would be dropped as duplicates).
    multi_frame_slice(&ct, &dir.join("cine.dcm"), "1.2.3.44", &[(3, 4), (1, 2)]);
    let bytes = std::fs::read(&ct).unwrap();
    std::fs::write(dir.join("truncated.dcm"), &bytes[..bytes.len() / 2]).unwrap();
    patient_slice(&ct, &dir.join("unlabelled.dcm"), 7, 0);
    let mut huge = dicom_object::open_file(&ct).unwrap();
    huge.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(60000u16),
    ));
    huge.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from("1.2.3.45"),
    ));
    huge.write_to_file(dir.join("huge.dcm")).unwrap();
    // Pixels that may show identifying text: burned-in annotation, a secondary capture.
    let mut burned = dicom_object::open_file(&ct).unwrap();
    burned.put(DataElement::new(
        tags::BURNED_IN_ANNOTATION,
        VR::CS,
        PrimitiveValue::from("YES"),
    ));
    burned.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from("1.2.3.46"),
    ));
    burned.write_to_file(dir.join("burned.dcm")).unwrap();
    let mut capture = dicom_object::open_file(&ct).unwrap();
    capture.put(DataElement::new(
        tags::SOP_CLASS_UID,
        VR::UI,
        PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.7"),
    ));
    capture.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from("1.2.3.47"),
    ));
    capture.write_to_file(dir.join("capture.dcm")).unwrap();
    // A file named after its patient, as archives often name them.
    patient_slice(&ct, &dir.join("Smithers-Waylon-MRN778899.dcm"), 8, 0);
    csv.push_str("sr.dcm,normal\ncine.dcm,normal\ntruncated.dcm,normal\nhuge.dcm,normal\n");
    csv.push_str("burned.dcm,normal\ncapture.dcm,normal\nSmithers-Waylon-MRN778899.dcm,normal\n");
    std::fs::write(t.join("labels.csv"), &csv).unwrap();

    let run_with = |key: u8, out: &str| {
        let mut a = args(&t.join(out));
        a.test_fraction = 0.4;
        IngestSource::Dicom {
            dir: dir.clone(),
            labels: t.join("labels.csv"),
            deid_key: Some(key_file(t, &format!("key{key}"), key)),
            keep_identifiers: false,
            allow_burned_in: false,
            allow_secondary_capture: false,
            args: a,
        }
    };
    let (report, m, url) = ingest(run_with(1, "out-a")).await;
    let reasons: BTreeMap<String, Reason> = report
        .dropped
        .iter()
        .map(|d| (d.source.clone(), d.reason))
        .collect();
    assert_eq!(reasons["sr.dcm"], Reason::NoPixelData);
    assert!(
        !reasons.keys().any(|s| s.starts_with("cine.dcm")),
        "{reasons:?}"
    );
    assert_eq!(reasons["truncated.dcm"], Reason::Unreadable);
    assert_eq!(reasons["unlabelled.dcm"], Reason::NoLabel);
    assert_eq!(reasons["huge.dcm"], Reason::Unreadable);
    assert_eq!(reasons["burned.dcm"], Reason::BurnedInAnnotation);
    assert_eq!(reasons["capture.dcm"], Reason::SecondaryCapture);
    let detail = &report
        .dropped
        .iter()
        .find(|d| d.source == "huge.dcm")
        .unwrap()
        .detail;
    assert!(detail.contains("60000x128"), "{detail}");
    assert_eq!(report.written.values().sum::<u64>(), 16, "{report:?}");

    // No identifying attribute of any source survives anywhere in the output.
    let original = dicom_object::open_file(&ct).unwrap();
    let mut secrets: Vec<String> = [
        tags::PATIENT_NAME,
        tags::PATIENT_ID,
        tags::PATIENT_BIRTH_DATE,
        tags::INSTITUTION_NAME,
        tags::ACCESSION_NUMBER,
        tags::REFERRING_PHYSICIAN_NAME,
        tags::STATION_NAME,
        tags::STUDY_ID,
        tags::STUDY_INSTANCE_UID,
        tags::SERIES_INSTANCE_UID,
        tags::SOP_INSTANCE_UID,
        tags::FRAME_OF_REFERENCE_UID,
        tags::STUDY_DATE,
    ]
    .iter()
    .filter_map(|&tag| {
        original
            .get(tag)?
            .to_str()
            .ok()
            .map(|s| s.trim_matches(['\0', ' ']).to_string())
    })
    .filter(|v| v.len() >= 4)
    .collect();
    assert!(
        secrets.len() >= 8,
        "CT_small.dcm carries identifiers to remove: {secrets:?}"
    );
    // Nor the name or path of any source file.
    secrets.extend(
        [
            "Smithers",
            "MRN778899",
            "truncated.dcm",
            "unlabelled",
            "burned.dcm",
            "capture.dcm",
        ]
        .map(String::from),
    );
    secrets.push(dir.display().to_string());
    for p in 0..6 {
        secrets.push(format!("MRN-40{p}17"));
        secrets.push(format!("Doe{p}"));
        secrets.push(format!("1.2.826.0.1.3680043.99.{p}"));
    }
    let mut files = Vec::new();
    all_files(&t.join("out-a"), &mut files);
    let names: BTreeSet<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "manifest.json",
        "ingest-report.json",
        "deid-audit.json",
        "dicom-metadata.jsonl",
    ] {
        assert!(names.contains(want), "{want} in {names:?}");
    }
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for s in &secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s:?} survives in {}",
                f.display()
            );
        }
    }
    // The audit says what went, never the values.
    let audit = std::fs::read_to_string(t.join("out-a/deid-audit.json")).unwrap();
    for kw in [
        "PatientBirthDate",
        "InstitutionName",
        "AccessionNumber",
        "ReferringPhysicianName",
    ] {
        if original.element_by_name(kw).is_ok() {
            assert!(
                audit.contains(&format!(
                    "\"keyword\": \"{kw}\",\n          \"action\": \"removed\""
                )),
                "{kw} audited"
            );
        }
    }
    assert!(audit.contains("\"keyword\": \"PatientID\",\n          \"action\": \"pseudonymised\""));
    // The manifest records the profile and the key's fingerprint (the audit's), never the key:
    // a model card quotes them.
    let audit_json: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.join("out-a/manifest.json")).unwrap()).unwrap();
    let deid = &manifest["deidentification"];
    assert_eq!(deid["key_fingerprint"], audit_json["key_fingerprint"]);
    assert_eq!(deid["profile"], audit_json["profile"]);
    assert_eq!(deid["key_fingerprint"].as_str().unwrap().len(), 16);

    // One patient never lands in two splits.
    let meta = std::fs::read_to_string(t.join("out-a/dicom-metadata.jsonl")).unwrap();
    let patient_of: BTreeMap<String, String> = meta
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["patient"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut splits_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (split, id) in rows(&url, &m).await.keys() {
        splits_of
            .entry(patient_of[id].clone())
            .or_default()
            .insert(split.clone());
    }
    assert!(splits_of.values().all(|s| s.len() == 1), "{splits_of:?}");
    // The cine loop's two frames are two samples of one patient, named by frame.
    let frames: Vec<&String> = patient_of
        .keys()
        .filter(|id| id.contains("-f000"))
        .collect();
    assert_eq!(frames.len(), 2, "{patient_of:?}");
    assert!(frames[0].ends_with("-f0001") && frames[1].ends_with("-f0002"));
    assert_eq!(patient_of[frames[0]], patient_of[frames[1]]);
    assert!(
        m.splits.contains_key("test") && m.splits.contains_key("train"),
        "{:?}",
        m.splits.keys()
    );

    // Pseudonyms are stable for a key and differ for another.
    let patients = |text: &str| -> BTreeSet<String> {
        text.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["patient"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    ingest(run_with(1, "out-b")).await;
    ingest(run_with(2, "out-c")).await;
    let a = patients(&meta);
    let b = patients(&std::fs::read_to_string(t.join("out-b/dicom-metadata.jsonl")).unwrap());
    let c = patients(&std::fs::read_to_string(t.join("out-c/dicom-metadata.jsonl")).unwrap());
    assert_eq!(a, b);
    assert!(a.is_disjoint(&c), "another key gives other pseudonyms");
    assert_eq!(a.len(), 9, "8 patients and the original slice's patient");

    // With --encrypt-key, what lies beside the shards is sealed like them.
    let keys = t.join("keys");
    let ctctl = |args: &[&str]| {
        let out = std::process::Command::new(ctcluster_tests::binary("ctctl"))
            .args(args)
            .env("CT_KEYRING", &keys)
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    ctctl(&["keys", "new", "site-a", "--dir", keys.to_str().unwrap()]);
    let sealed = t.join("sealed");
    let summary = ctctl(&[
        "ingest",
        "dicom",
        dir.to_str().unwrap(),
        "--labels",
        t.join("labels.csv").to_str().unwrap(),
        "--deid-key",
        key_file(t, "key1", 1).to_str().unwrap(),
        "--encrypt-key",
        "site-a",
        "--test-fraction",
        "0.4",
        "--out",
        sealed.to_str().unwrap(),
    ]);
    assert!(
        summary.contains("burned.dcm"),
        "the terminal names the files: {summary}"
    );
    for f in [
        "ingest-report.json",
        "deid-audit.json",
        "dicom-metadata.jsonl",
    ] {
        let bytes = std::fs::read(sealed.join(f)).unwrap();
        assert!(bytes.starts_with(b"CTCSEAL1"), "{f} is not sealed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleaning_reports_every_planted_problem_and_none_reaches_the_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = t.join("xray");
    for d in [
        "train/normal",
        "train/pneumonia",
        "train/tumour",
        "test/normal",
        "test/pneumonia",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let good =
        |p: &str, seed: u32| png(&dir.join(p), 12, 12, 1, false, &pattern(12, 12, seed, 250));
    for i in 0..5 {
        good(&format!("train/normal/n{i}.png"), i);
        good(&format!("train/pneumonia/p{i}.png"), 20 + i);
        good(&format!("test/normal/t{i}.png"), 40 + i);
        good(&format!("test/pneumonia/u{i}.png"), 60 + i);
    }
    // The planted problems.
    std::fs::write(
        dir.join("train/normal/corrupt.png"),
        b"\x89PNG\r\n\x1a\nthis is not a png",
    )
    .unwrap();
    let whole = std::fs::read(dir.join("train/normal/n0.png")).unwrap();
    std::fs::write(
        dir.join("train/normal/truncated.png"),
        &whole[..whole.len() - 30],
    )
    .unwrap();
    png(
        &dir.join("train/normal/blank.png"),
        12,
        12,
        1,
        false,
        &[0; 144],
    );
    std::fs::copy(
        dir.join("train/normal/n1.png"),
        dir.join("train/normal/zz-copy-of-n1.png"),
    )
    .unwrap();
    // The same X-ray in test and in train: leakage; it stays in test.
    std::fs::copy(
        dir.join("test/pneumonia/u2.png"),
        dir.join("train/pneumonia/again.png"),
    )
    .unwrap();
    let mut nan: Vec<u8> = Vec::new();
    for i in 0..144 {
        let v = if i == 77 { f32::NAN } else { i as f32 };
        nan.extend(v.to_le_bytes());
    }
    std::fs::write(
        dir.join("train/pneumonia/nan.npy"),
        npy("<f4", &[12, 12], &nan),
    )
    .unwrap();
    good("train/tumour/mislabelled.png", 99);
    std::fs::write(dir.join("train/normal/notes.txt"), "not an image").unwrap();
    // A header declaring 100000 x 100000 pixels: refused before anything is allocated.
    png_header_only(&dir.join("train/normal/huge.png"), 100_000, 100_000);

    let mut a = args(&t.join("clean"));
    a.classes = Some(vec!["normal".into(), "pneumonia".into()]);
    let (report, m, url) = ingest(IngestSource::Folder {
        dir: dir.clone(),
        args: a.clone(),
    })
    .await;
    let expected = [
        ("train/normal/corrupt.png", Reason::Unreadable),
        ("train/normal/truncated.png", Reason::Unreadable),
        ("train/normal/blank.png", Reason::Blank),
        ("train/normal/zz-copy-of-n1.png", Reason::Duplicate),
        ("train/pneumonia/again.png", Reason::CrossSplitDuplicate),
        ("train/pneumonia/nan.npy", Reason::NonFinite),
        ("train/tumour/mislabelled.png", Reason::UnknownLabel),
        ("train/normal/notes.txt", Reason::Unreadable),
        ("train/normal/huge.png", Reason::Unreadable),
    ];
    let got: BTreeMap<&str, Reason> = report
        .dropped
        .iter()
        .map(|d| (d.source.as_str(), d.reason))
        .collect();
    assert_eq!(got.len(), expected.len(), "{:#?}", report.dropped);
    for (source, reason) in expected {
        assert_eq!(
            got.get(source),
            Some(&reason),
            "{source}: {:#?}",
            report.dropped
        );
    }
    let leak = report
        .dropped
        .iter()
        .find(|d| d.reason == Reason::CrossSplitDuplicate)
        .unwrap();
    assert!(
        leak.detail.contains("test/pneumonia/u2.png"),
        "{}",
        leak.detail
    );
    assert_eq!(report.written["train"], 10);
    assert_eq!(report.written["test"], 10);
    let ids: BTreeSet<String> = rows(&url, &m)
        .await
        .keys()
        .map(|(_, id)| id.clone())
        .collect();
    for bad in [
        "corrupt",
        "truncated",
        "blank",
        "zz-copy-of-n1",
        "again",
        "nan",
        "mislabelled",
    ] {
        assert!(
            !ids.iter().any(|id| id.ends_with(bad)),
            "{bad} reached the shards"
        );
    }
    // The report is beside the shards, and the same ingest again writes the same dataset.
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.join("clean/ingest-report.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk["dropped"].as_array().unwrap().len(), 9);
    let huge = report
        .dropped
        .iter()
        .find(|d| d.source.ends_with("huge.png"))
        .unwrap();
    assert!(huge.detail.contains("100000x100000"), "{}", huge.detail);
    let first = std::fs::read(t.join("clean/manifest.json")).unwrap();
    ingest(IngestSource::Folder { dir, args: a }).await;
    assert_eq!(
        std::fs::read(t.join("clean/manifest.json")).unwrap(),
        first,
        "re-running is idempotent"
    );
    pyarrow_reads(&t.join("clean/train-00000.arrow"), 10);
}

/// pyarrow opens a shard as it is, when the test venv has pyarrow (CI installs it).
fn pyarrow_reads(shard: &Path, rows: usize) {
    let venv = std::env::var("CTCLUSTER_TORCH_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/ctcluster/torchvenv")
        });
    let python = venv.join("bin/python");
    let has = std::process::Command::new(&python)
        .args(["-c", "import pyarrow"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        eprintln!(
            "SKIPPED the pyarrow check: no pyarrow in {} (.ci/run installs it)",
            venv.display()
        );
        return;
    }
    let script = "import sys, pyarrow.ipc as ipc\nt = ipc.open_file(sys.argv[1]).read_all()\nprint(t.num_rows, t.schema.names, len(t.column('image')[0].as_py()))";
    let out = std::process::Command::new(&python)
        .args(["-c", script, &shard.display().to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.trim(), format!("{rows} ['id', 'label', 'image'] 144"));
}
