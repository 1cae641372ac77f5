//! Benchmark: the workers' data loader next to the trainer on the same machine. The loader is
//! what a worker does for every sample: read the shard from the object store, check its sha256,
//! decode the Arrow file, then window, resize and augment each image; the trainer is forward +
//! backward of the seed CNN on micro-batches of 32. The loader must not be what workers wait for.
//!
//! `cargo bench -p ctcluster-tests --bench loader` prints a Markdown table and writes
//! `loader.json` beside the bench binary. The stores are a local folder (file://) and an
//! S3-compatible server on loopback (`ctcluster-s3`: s3s-fs, built with the workspace).

use std::time::Instant;

use burn::tensor::Device;
use ctcluster_common::dataset::{
    DecodedShard, HeadCtOptions, Manifest, SynthOptions, load_manifest, load_shard, write_head_ct,
    write_synthetic,
};
use ctcluster_common::model::{BatchBuilder, ModelConfig, model_for_job, train_batch};
use ctcluster_common::spec::JobSpec;
use ctcluster_common::storage::StoreUrl;
use ctcluster_tests::shared_data;

const MICRO: usize = 32;

struct Case {
    name: String,
    spec_extra: &'static str,
}

/// Reads every train shard from the store and turns every image into model input: images/s
/// (cold: store, checksum, decode and augment) and (warm: shards cached, as a worker has them
/// after the first epoch) images/s of augmentation alone.
async fn loader(
    ds: &StoreUrl,
    model: &ModelConfig,
    manifest: &Manifest,
    epochs: u32,
) -> (f64, f64) {
    let shards = manifest.splits["train"].shards.len();
    let (mut cold_images, mut cold_secs) = (0usize, 0.0);
    let mut cached: Vec<DecodedShard> = Vec::new();
    for epoch in 0..epochs {
        let start = Instant::now();
        cached.clear();
        for shard in 0..shards {
            let s = load_shard(ds, manifest, "train", shard).await.unwrap();
            cold_images += assemble(&s, model, manifest, epoch);
            cached.push(s);
        }
        cold_secs += start.elapsed().as_secs_f64();
    }
    let start = Instant::now();
    let mut warm_images = 0;
    for epoch in 0..epochs {
        for s in &cached {
            warm_images += assemble(s, model, manifest, epoch + 100);
        }
    }
    (
        cold_images as f64 / cold_secs,
        warm_images as f64 / start.elapsed().as_secs_f64(),
    )
}

/// Builds the model input of every row of a shard, in micro-batches, as a worker's batch step
/// does (the same builder, augmentation drawn per sample).
fn assemble(s: &DecodedShard, model: &ModelConfig, manifest: &Manifest, epoch: u32) -> usize {
    let mut batch = BatchBuilder::new(model, &manifest.image, MICRO);
    for (row, id) in s.ids.iter().enumerate() {
        let draw = model.input.augment.draw(7, epoch, id);
        batch.push(s, row, Some(&draw)).unwrap();
        if batch.len() >= MICRO {
            std::hint::black_box(batch.finish());
            batch = BatchBuilder::new(model, &manifest.image, MICRO);
        }
    }
    s.ids.len()
}

/// Forward + backward images/s on micro-batches of 32 (after 3 warm-up passes).
fn trainer(model: &ModelConfig, manifest: &Manifest, shard: &DecodedShard, passes: usize) -> f64 {
    let device = Device::flex();
    let params = model.init_params(1);
    let mut batch = BatchBuilder::new(model, &manifest.image, MICRO);
    for row in 0..MICRO {
        batch.push(shard, row, None).unwrap();
    }
    let batch = batch.finish();
    let mut start = Instant::now();
    for i in 0..passes + 3 {
        if i == 3 {
            start = Instant::now();
        }
        std::hint::black_box(train_batch(model, &params, &batch, &device).unwrap());
    }
    (passes * MICRO) as f64 / start.elapsed().as_secs_f64()
}

fn s3s() -> Option<(ctcluster_tests::Proc, u16, tempfile::TempDir)> {
    let dir = tempfile::tempdir().ok()?;
    std::fs::create_dir_all(dir.path().join("bench")).ok()?;
    let (server, port) = ctcluster_tests::start_s3(dir.path(), "bench", "benchsecret");
    // SAFETY: set before any store is built, on the main thread of a benchmark process.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "benchsecret");
        std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
        std::env::set_var("AWS_ALLOW_HTTP", "true");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    Some((server, port, dir))
}

async fn write_dataset(case: usize, url: &StoreUrl) -> String {
    if case == 0 {
        if let Some(data) = shared_data() {
            ctcluster_tests::ingest_npz(&data.join("pneumoniamnist/pneumoniamnist.npz"), url).await;
            return "PneumoniaMNIST train, ingested (4682 x 28x28 u8)".into();
        }
        let opts = SynthOptions {
            train: 4096,
            test: 16,
            size: 28,
            seed: 1,
        };
        write_synthetic(url, opts).await.unwrap();
        return "synthetic 28x28 u8 (../shared/data absent)".into();
    }
    let opts = HeadCtOptions {
        train: 2048,
        test: 16,
        size: 128,
        seed: 1,
    };
    write_head_ct(url, opts, None).await.unwrap();
    "head-CT phantom (2048 x 128x128 i16 HU)".into()
}

#[tokio::main]
async fn main() {
    // As the binaries do (common::alloc).
    ctcluster_common::alloc::keep_freed_memory();
    let cases = [
        Case {
            name: "28x28 X-ray, augment (shift 2, rotate 10, intensity 0.1)".into(),
            spec_extra: "augment:\n  crop_padding: 2\n  rotation_degrees: 10\n  intensity: 0.1\n",
        },
        Case {
            name: "128x128 CT, brain window, resize 64x64, augment (shift 4, rotate 10, flip)"
                .into(),
            spec_extra: "preprocess:\n  window: brain\n  resize: [64, 64]\naugment:\n  crop_padding: 4\n  rotation_degrees: 10\n  hflip: true\n",
        },
    ];
    let tmp = tempfile::tempdir().unwrap();
    let s3 = s3s();
    let mut rows = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let mut stores = vec![(
            "file",
            StoreUrl::parse(&tmp.path().join(format!("ds{i}")).display().to_string()).unwrap(),
        )];
        if s3.is_some() {
            stores.push((
                "s3 (s3s-fs on loopback)",
                StoreUrl::parse(&format!("s3://bench/ds{i}")).unwrap(),
            ));
        }
        for (store, url) in stores {
            let what = write_dataset(i, &url).await;
            let manifest = load_manifest(&url).await.unwrap();
            let spec = JobSpec::from_yaml(&format!(
                "name: b\ndataset: {}\noutput: memory://b/o\nmodel:\n  dropout: 0\n{}",
                url.as_str(),
                case.spec_extra
            ))
            .unwrap();
            let model = model_for_job(&spec, &manifest).unwrap();
            let (cold, warm) = loader(&url, &model, &manifest, 3).await;
            let shard = load_shard(&url, &manifest, "train", 0).await.unwrap();
            let (m2, man2) = (model.clone(), manifest.clone());
            let train = tokio::task::spawn_blocking(move || trainer(&m2, &man2, &shard, 20))
                .await
                .unwrap();
            rows.push(serde_json::json!({
                "case": case.name, "dataset": what, "store": store,
                "loader_cold_images_per_sec": cold, "loader_warm_images_per_sec": warm,
                "trainer_images_per_sec": train,
            }));
        }
    }
    if let Some((mut server, _, _dir)) = s3 {
        server.kill();
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "\nloader (one thread) vs trainer (forward+backward, micro-batch {MICRO}), {threads} CPU threads\n"
    );
    println!(
        "| input | store | loader cold images/s | loader warm images/s | trainer images/s | cold / trainer |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.1}x |",
            r["case"].as_str().unwrap_or(""),
            r["store"].as_str().unwrap_or(""),
            f("loader_cold_images_per_sec"),
            f("loader_warm_images_per_sec"),
            f("trainer_images_per_sec"),
            f("loader_cold_images_per_sec") / f("trainer_images_per_sec")
        );
    }
    let path = ctcluster_tests::bin_dir().join("loader.json");
    let json = serde_json::json!({"benchmark": "loader", "threads": threads, "rows": rows});
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("\nwritten to {}", path.display());
}
