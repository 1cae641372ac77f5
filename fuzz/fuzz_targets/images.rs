//! The image decoders `ctctl ingest` runs on files it is given (PNG, JPEG, single-image .npy,
//! DICOM). The first byte picks the decoder. Ingest catches panics and reports the file, so
//! the target does too: what must not happen is the process dying (an allocation the header
//! asked for, a stack overflow, memory errors).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let kind = ["png", "jpeg", "npy", "dicom"][usize::from(pick) % 4];
    let _ = std::panic::catch_unwind(|| ctctl::ingest::decode_file(kind, bytes));
});
