//! Explanations point at the evidence, measured: a seed CNN trained through the cluster on
//! generated images whose class is decided by one bright or dark patch (its mask known) is
//! explained by every method on the correctly classified test images: the pointing
//! game, the share of the map inside the patch, the sanity check of Adebayo et al. 2018
//! (re-initialised weights give unrelated maps) and the deletion test. Then `ctctl explain`
//! writes its files.

use ctcluster_common::card::load_model;
use ctcluster_common::dataset::{SynthOptions, patch_sample, write_patches};
use ctcluster_common::model::{
    BatchInput, Device, Method, ModelConfig, argmax, eval_batch, explain,
};
use ctcluster_common::rng::KeyedRng;
use ctcluster_common::storage::StoreUrl;
use ctcluster_tests::{Cluster, spec};

const SIZE: u32 = 28;
const SEED: u64 = 4;

/// Ranks (0-based, ties averaged) of `v`.
fn ranks(v: &[f32]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        for &k in &idx[i..=j] {
            r[k] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation.
fn spearman(a: &[f32], b: &[f32]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

/// The class's probability as the pixels are removed (set to the normalisation mean) in
/// `order`, 5% of them at a time up to 50%: the area under that curve.
fn deletion_area(
    cfg: &ModelConfig,
    params: &[f32],
    pixels: &[f32],
    class: usize,
    order: &[usize],
) -> f64 {
    let steps = 10;
    let per = order.len() / 20;
    let mut batch = Vec::new();
    let mut img = pixels.to_vec();
    for s in 0..=steps {
        if s > 0 {
            for &p in &order[(s - 1) * per..s * per] {
                img[p] = cfg.norm_mean;
            }
        }
        batch.extend_from_slice(&img);
    }
    let input = BatchInput {
        pixels: batch,
        labels: vec![0; steps + 1],
        keep_mask: None,
    };
    let out = eval_batch(cfg, params, &input, &Device::flex()).unwrap();
    out.probs
        .chunks_exact(cfg.classes)
        .map(|p| f64::from(p[class]))
        .sum::<f64>()
        / (steps + 1) as f64
}

/// What the maps of one model and method score on the correctly classified test images.
#[derive(Debug)]
struct Scores {
    correct: usize,
    pointing: f64,
    mass: f64,
    spearman: f64,
    deletion_map: f64,
    deletion_random: f64,
}

fn score(cfg: &ModelConfig, params: &[f32], method: Method, test: usize) -> Scores {
    let dev = Device::flex();
    let random = cfg.init_params(99);
    let (mut hits, mut mass, mut n) = (0, 0.0, 0);
    let (mut rho, mut del_map, mut del_random) = (0.0, 0.0, 0.0);
    for i in 0..test {
        let s = patch_sample(SIZE, SEED, 2, i);
        let pixels: Vec<f32> = s.pixels.iter().map(|&p| f32::from(p)).collect();
        let e = explain(cfg, params, &pixels, method, None, &dev).unwrap();
        if argmax(&e.probs) != s.label as usize {
            continue;
        }
        n += 1;
        hits += usize::from(s.mask[argmax(&e.map)]);
        let total: f32 = e.map.iter().sum();
        let inside: f32 = e
            .map
            .iter()
            .zip(&s.mask)
            .filter(|(_, m)| **m)
            .map(|(v, _)| v)
            .sum();
        mass += f64::from(inside / total.max(1e-12));
        // Sanity: the same method on re-initialised weights, for the same class.
        let r = explain(cfg, &random, &pixels, method, Some(e.class), &dev).unwrap();
        rho += spearman(&e.map, &r.map);
        // Deletion: in the map's order against a random order.
        let mut by_map: Vec<usize> = (0..e.map.len()).collect();
        by_map.sort_by(|&a, &b| e.map[b].total_cmp(&e.map[a]));
        let mut shuffled: Vec<usize> = (0..e.map.len()).collect();
        KeyedRng::new(i as u64).shuffle(&mut shuffled);
        del_map += deletion_area(cfg, params, &pixels, e.class, &by_map);
        del_random += deletion_area(cfg, params, &pixels, e.class, &shuffled);
    }
    let nf = n as f64;
    Scores {
        correct: n,
        pointing: hits as f64 / nf,
        mass: mass / nf,
        spearman: rho / nf,
        deletion_map: del_map / nf,
        deletion_random: del_random / nf,
    }
}

/// Trains `model` (a spec's `model:` block) through a two-worker cluster on the patch dataset;
/// returns the model's URL.
async fn train(ds: &StoreUrl, out: &str, name: &str, model: &str) -> String {
    let cluster = Cluster::start(&format!("memory://explain-{name}/state"), 2).await;
    let status = cluster
        .run(&spec(
            &format!("explain-{name}"),
            ds.as_str(),
            out,
            &format!("batch_size: 64\nepochs: 5\nseed: 1\nmodel:\n{model}"),
        ))
        .await;
    cluster.stop().await;
    status.model
}

/// The seed CNN, and with `CTCLUSTER_EXPLAIN_ZOO=1` the two ResNet normalisations too (the
/// README's table; about four minutes more here).
fn models() -> Vec<(&'static str, &'static str)> {
    let mut m = vec![("seed-cnn", "  dropout: 0.0\n")];
    if std::env::var("CTCLUSTER_EXPLAIN_ZOO").is_ok_and(|v| v == "1") {
        m.push((
            "resnet-group",
            "  name: resnet\n  blocks: [1, 1]\n  width: 16\n  dropout: 0.0\n",
        ));
        m.push((
            "resnet-none",
            "  name: resnet\n  blocks: [1, 1]\n  width: 16\n  norm: none\n  dropout: 0.0\n",
        ));
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explanations_point_at_the_patch_and_depend_on_the_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = StoreUrl::parse("memory://explain/ds").unwrap();
    let opts = SynthOptions {
        train: 2048,
        test: 96,
        size: SIZE,
        seed: SEED,
    };
    write_patches(&ds, opts, None).await.unwrap();
    let out = tmp.path().join("out").display().to_string();
    let mut urls = Vec::new();
    for (name, model) in models() {
        let url = train(&ds, &out, name, model).await;
        let (card, params) = load_model(&url).await.unwrap();
        for method in Method::ALL {
            let s = score(&card.model, &params, method, opts.test);
            eprintln!(
                "{name} {}: {} of {} correct; pointing game {:.3}, mass inside the patch {:.3}, \
                 Spearman with re-initialised weights {:.3}, deletion area {:.3} by the map, \
                 {:.3} at random",
                method.name(),
                s.correct,
                opts.test,
                s.pointing,
                s.mass,
                s.spearman,
                s.deletion_map,
                s.deletion_random
            );
            if name != "seed-cnn" {
                continue;
            }
            assert!(s.correct >= 90, "{} of {} correct", s.correct, opts.test);
            // Every method points far above chance (the patch is 36 of 784 pixels) and
            // removing pixels in its order lowers the class probability faster than at random.
            assert!(
                s.pointing >= 0.6,
                "{}: pointing game {}",
                method.name(),
                s.pointing
            );
            assert!(
                s.deletion_map < 0.9 * s.deletion_random,
                "{}: deletion {} by the map, {} at random",
                method.name(),
                s.deletion_map,
                s.deletion_random
            );
            if matches!(
                method,
                Method::Occlusion | Method::InputXGradient | Method::GradCamXInput
            ) {
                // These meet all four targets on the seed CNN: the pointing game, most of the
                // map inside the patch, maps unrelated to re-initialised weights' (and faster
                // than random at deletion, above).
                assert!(
                    s.pointing >= 0.9 && s.mass >= 0.6 && s.spearman < 0.5,
                    "{}: {s:?}",
                    method.name()
                );
            }
        }
        urls.push(url);
    }
    let status_model = urls[0].clone();

    // `ctctl explain` on the dataset's first test images and a file that is not an image.
    let dir = tmp.path().join("explained");
    std::fs::write(tmp.path().join("broken.png"), b"nope").unwrap();
    let args = ctctl::explain::ExplainArgs {
        model: status_model,
        inputs: vec![
            ds.as_str().to_string(),
            tmp.path().join("broken.png").display().to_string(),
        ],
        out: dir.clone(),
        method: Method::GradCam,
        class: None,
        split: "test".into(),
        limit: 4,
    };
    let doc = ctctl::explain::run(&args).await.unwrap();
    assert_eq!(doc.images.len(), 4, "the limit counts every image");
    assert_eq!(doc.layer, "conv2");
    assert_eq!(doc.map_shape, [28, 28]);
    assert_eq!(doc.model_sha256.len(), 64);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("explanations.json")).unwrap()).unwrap();
    assert_eq!(json["method"], "gradcam");
    for entry in &doc.images {
        let png = std::fs::read(dir.join(entry.png.as_ref().unwrap())).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let npy = std::fs::read(dir.join(entry.npy.as_ref().unwrap())).unwrap();
        let arr = ctcluster_common::dataset::NpyArray::parse(&npy, "map").unwrap();
        assert_eq!(
            (arr.shape.as_slice(), arr.descr.as_str()),
            (&[28usize, 28][..], "<f4")
        );
        assert!(entry.probability.unwrap() > 0.0 && entry.class.is_some());
    }
    let limited = ctctl::explain::ExplainArgs { limit: 100, ..args };
    let doc = ctctl::explain::run(&limited).await.unwrap();
    let broken = doc.images.last().unwrap();
    assert!(broken.error.is_some() && broken.png.is_none(), "{broken:?}");
}
