//! Files the ingest tests write: numpy arrays and archives, PNG (8- and 16-bit, grey and RGB)
//! and JPEG images.

use std::io::Write;
use std::path::Path;

/// A `.npy` file's bytes: `descr` like `|u1`, `<f4`; `data` little-endian C order.
pub fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// A `.npz` archive of named arrays.
pub fn npz(path: &Path, arrays: &[(&str, Vec<u8>)]) {
    let file = std::fs::File::create(path).expect("create npz");
    let mut zip = zip::ZipWriter::new(file);
    for (name, bytes) in arrays {
        zip.start_file(
            format!("{name}.npy"),
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored),
        )
        .expect("zip entry");
        zip.write_all(bytes).expect("zip write");
    }
    zip.finish().expect("zip finish");
}

/// A PNG: `channels` 1 or 3, `sixteen` for 16-bit samples (values as given).
pub fn png(path: &Path, width: u32, height: u32, channels: u32, sixteen: bool, values: &[u16]) {
    let file = std::fs::File::create(path).expect("create png");
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    enc.set_color(if channels == 3 {
        png::ColorType::Rgb
    } else {
        png::ColorType::Grayscale
    });
    enc.set_depth(if sixteen {
        png::BitDepth::Sixteen
    } else {
        png::BitDepth::Eight
    });
    let data: Vec<u8> = if sixteen {
        values.iter().flat_map(|v| v.to_be_bytes()).collect()
    } else {
        values.iter().map(|&v| v as u8).collect()
    };
    let mut w = enc.write_header().expect("png header");
    w.write_image_data(&data).expect("png data");
}

/// A grayscale baseline JPEG (quality 100).
pub fn jpeg(path: &Path, width: u16, height: u16, values: &[u8]) {
    let enc = jpeg_encoder::Encoder::new_file(path, 100).expect("create jpeg");
    enc.encode(values, width, height, jpeg_encoder::ColorType::Luma)
        .expect("encode jpeg");
}

/// A smooth test pattern with a per-image offset, so images differ.
pub fn pattern(width: u32, height: u32, seed: u32, max: u32) -> Vec<u16> {
    (0..width * height)
        .map(|i| {
            let (x, y) = (i % width, i / width);
            ((x * 7 + y * 13 + seed * 31) % (max + 1)) as u16
        })
        .collect()
}

/// A PNG whose header declares `width` x `height` grey pixels but which holds no image data:
/// what a forged or damaged file looks like to a decoder that trusts the header.
pub fn png_header_only(path: &Path, width: u32, height: u32) {
    fn crc(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(13u32.to_be_bytes());
    out.extend(&ihdr);
    out.extend(crc(&ihdr).to_be_bytes());
    // A one-byte image data chunk: decoders read the header up to here.
    let idat = b"IDAT\x00".to_vec();
    out.extend(1u32.to_be_bytes());
    out.extend(&idat);
    out.extend(crc(&idat).to_be_bytes());
    std::fs::write(path, out).expect("write png");
}

/// Writes a multi-frame copy of a single-frame 16-bit DICOM slice (a cine loop): one frame per
/// `(numerator, denominator)`, the slice's values scaled by it, and `sop_instance_uid` as its
/// instance UID (so that ingest does not take it for the slice itself).
pub fn multi_frame_slice(slice: &Path, out: &Path, sop_instance_uid: &str, scales: &[(i32, i32)]) {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let mut obj = dicom_object::open_file(slice).unwrap();
    let px = obj
        .element(tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .to_vec();
    let frames: Vec<u8> = scales
        .iter()
        .flat_map(|&(num, den)| {
            px.chunks_exact(2).flat_map(move |c| {
                ((i32::from(i16::from_le_bytes([c[0], c[1]])) * num / den) as i16).to_le_bytes()
            })
        })
        .collect();
    obj.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from(scales.len().to_string()),
    ));
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::from(frames),
    ));
    obj.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(sop_instance_uid),
    ));
    obj.write_to_file(out).unwrap();
}
