//! `ctctl`'s command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// ctcluster's command line: submit and watch training jobs, convert datasets, evaluate models.
#[derive(Debug, Parser)]
#[command(name = "ctctl", version, about)]
pub struct Cli {
    /// The coordinator's URL.
    #[arg(
        long,
        global = true,
        env = "CTCTL_COORDINATOR",
        default_value = "https://127.0.0.1:50051"
    )]
    pub coordinator: String,
    /// The cluster CA certificate (PEM) that signed the coordinator's certificate.
    #[arg(long, global = true, env = "CTCTL_CA")]
    pub ca: Option<PathBuf>,
    /// A file holding your bearer token (or set CTCTL_TOKEN to the token itself).
    #[arg(long, global = true, env = "CTCTL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Talk plain text, without a token, to an `--insecure` coordinator.
    #[arg(long, global = true, env = "CTCTL_INSECURE")]
    pub insecure: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable.
    Table,
    /// One JSON document.
    Json,
}

/// `ctctl`'s subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a job spec (YAML); prints the job id.
    Submit {
        /// The spec file.
        file: PathBuf,
        /// Then watch it until it ends.
        #[arg(long)]
        watch: bool,
        /// Submit only if the coordinator has no unfinished job of the spec's name; if it has
        /// one (a restarted or re-admitted run's), take that one instead (print, watch it).
        #[arg(long)]
        once: bool,
    },
    /// One job's status.
    Status {
        /// The job id.
        job: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Every job the coordinator knows.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// The cluster's workers: health, throughput and where their time goes.
    Workers {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Cancel a job.
    Cancel {
        /// The job id.
        job: String,
    },
    /// Follow a job with a live progress bar until it ends.
    Watch {
        /// The job id.
        job: String,
    },
    /// Write a job's report: loss and accuracy charts per epoch, the validation confusion
    /// matrix (PNG), and an HTML page showing them (index.html).
    Report {
        /// The job id.
        job: String,
        /// Folder to write into (created if missing).
        #[arg(long, default_value = "report")]
        out: PathBuf,
    },
    /// Create a cluster's TLS certificates and user tokens.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Create and inspect datasets.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Inspect exported models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Evaluate an exported model on a dataset split: on the cluster's workers (a job), or
    /// with --local here on the CPU. Both give the same report.
    Evaluate {
        /// The model: a job's output folder or its `model.safetensors` URL.
        #[arg(long)]
        model: String,
        /// The dataset URL.
        #[arg(long)]
        dataset: String,
        /// The split to evaluate.
        #[arg(long, default_value = "test")]
        split: String,
        /// Evaluate here, on this machine's CPU, instead of on the cluster.
        #[arg(long)]
        local: bool,
        /// On the cluster: where the job writes its report, `<URL>/<job id>/evaluation.json`
        /// (default: the folder holding the model's job folder).
        #[arg(long)]
        report_to: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        /// Also write reliability.png and roc.png (two classes) into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Class probabilities from an exported model for datasets, image files (PNG, JPEG, .npy)
    /// and DICOM files or folders, locally on the CPU; one row per image.
    Predict {
        /// The model: a job's output folder or its `model.safetensors` URL.
        #[arg(long)]
        model: String,
        /// Datasets (URL, or a folder with manifest.json), image files or folders of them.
        #[arg(required = true)]
        inputs: Vec<String>,
        /// The split of dataset inputs.
        #[arg(long, default_value = "test")]
        split: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "csv")]
        output: crate::predict::Output,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Where the model looked: a heat map per image (PNG over the image, raw .npy) and
    /// explanations.json, locally on the CPU.
    Explain {
        /// The model: a job's output folder or its `model.safetensors` URL.
        #[arg(long)]
        model: String,
        /// Datasets (URL, or a folder with manifest.json), image files or folders of them.
        #[arg(required = true)]
        inputs: Vec<String>,
        /// The output folder.
        #[arg(long)]
        out: PathBuf,
        /// gradcam (the last convolutional stage), gradcam++, saliency, smoothgrad,
        /// input-x-gradient, gradcam-x-input or occlusion.
        #[arg(long, default_value = "gradcam")]
        method: String,
        /// The class to explain, by name (default: the predicted class).
        #[arg(long)]
        class: Option<String>,
        /// The split of dataset inputs.
        #[arg(long, default_value = "test")]
        split: String,
        /// Most images explained.
        #[arg(long, default_value_t = crate::explain::DEFAULT_LIMIT)]
        limit: usize,
    },
    /// Run the whole thing locally: generated data, a coordinator, two workers, a training job.
    Demo(DemoArgs),
    /// Turn numpy arrays, image folders or DICOM studies into a clean, sharded dataset, with a
    /// report of every item left out and why.
    #[command(subcommand)]
    Ingest(crate::ingest::IngestSource),
    /// Encryption keys for datasets and checkpoints.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// `ctctl model ...`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print a model's card (architecture, preprocessing, classes, the dataset and its
    /// de-identification, the job spec, validation and test metrics) and check the weights
    /// against the sha256 it records.
    Show {
        /// The model: a job's output folder, or its `model.safetensors` or `model.json` URL.
        url: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
}

/// `ctctl keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new random AES-256 key to DIR/ID.key (readable by you only).
    New {
        /// The key's id, recorded in manifests (letters, digits, - and _).
        id: String,
        /// The keyring folder (point CT_KEYRING at it on every process that needs the key).
        #[arg(long, env = "CT_KEYRING", default_value = "keys")]
        dir: PathBuf,
    },
}

/// `ctctl certs ...`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write a CA, the coordinator's certificate, worker and aggregator certificates and user
    /// tokens.
    Init {
        /// The folder to create them in.
        dir: PathBuf,
        /// Extra names the coordinator and the aggregators are reached by (DNS names or IPs;
        /// localhost and 127.0.0.1 are always included).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Worker certificates to make.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Aggregator certificates to make (sharded aggregation over TLS; see
        /// `ctcluster-coordinator --role aggregator`).
        #[arg(long, default_value_t = 0)]
        aggregators: usize,
        /// Users besides `admin` (comma-separated); each gets a token file.
        #[arg(long, value_delimiter = ',')]
        users: Vec<String>,
    },
}

/// `ctctl dataset ...`
#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Convert a MedMNIST-style .npz (train/val/test images and labels) into a dataset.
    FromNpz {
        /// The .npz file.
        file: PathBuf,
        /// Where to write the dataset (URL or local folder).
        #[arg(long)]
        out: String,
        /// Class names, comma-separated, in label order.
        #[arg(long, value_delimiter = ',')]
        classes: Option<Vec<String>>,
        /// Rows per shard.
        #[arg(long, default_value_t = 2048)]
        shard_rows: usize,
        /// Seal the shards with this key (AES-256-GCM), found by id in `CT_KEY_<ID>` or
        /// `$CT_KEYRING/<id>.key` (`ctctl keys new` makes one).
        #[arg(long)]
        encrypt_key: Option<String>,
    },
    /// Generate a synthetic dataset: the head-CT phantom (Hounsfield units; normal,
    /// haemorrhage, ischaemia) or the simple two-class lesion images.
    Synth {
        /// Where to write it.
        #[arg(long)]
        out: String,
        /// Which generator.
        #[arg(long, value_enum, default_value = "head-ct")]
        kind: SynthKind,
        /// Training images.
        #[arg(long, default_value_t = 1536)]
        train: usize,
        /// Test images.
        #[arg(long, default_value_t = 256)]
        test: usize,
        /// Image side in pixels (default: 48 for head-ct, 28 for lesion and patch).
        #[arg(long)]
        size: Option<u32>,
        /// Generator seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Seal the shards with this key (see `from-npz`).
        #[arg(long)]
        encrypt_key: Option<String>,
    },
    /// Summarise a dataset: shape, classes, splits, class histogram.
    Inspect {
        /// The dataset URL.
        url: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Draw a labelled grid of a split's first images into a PNG.
    Preview {
        /// The dataset URL.
        url: String,
        /// The PNG to write.
        #[arg(long, default_value = "grid.png")]
        out: PathBuf,
        /// The split.
        #[arg(long, default_value = "train")]
        split: String,
        /// Images to show (1..=256).
        #[arg(long, default_value_t = 32)]
        count: usize,
        /// Display window: the data's own range, or a CT preset in Hounsfield units.
        #[arg(long, value_enum, default_value = "auto")]
        window: crate::preview::Window,
    },
}

/// The synthetic generators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SynthKind {
    /// Head-CT slices in Hounsfield units (i16): normal, haemorrhage, ischaemia.
    HeadCt,
    /// 8-bit images of an organ with or without a bright lesion (two classes).
    Lesion,
    /// 8-bit texture with one bright or dark square patch at a random place (classes dark and
    /// bright): the evidence is known, for checking explanations.
    Patch,
}

/// `ctctl demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Folder for the demo's data, checkpoints and job records.
    #[arg(long, default_value = "ctcluster-demo")]
    pub dir: PathBuf,
    /// Workers to start.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Epochs to train.
    #[arg(long, default_value_t = 5)]
    pub epochs: u32,
}
