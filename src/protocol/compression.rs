//! kombu's `compression` header. `application/x-gzip` is a zlib stream
//! (RFC 1950, Python's `zlib.compress`), not a gzip file.

use std::io::Read;

/// Inflates a body compressed with the named kombu compressor.
pub fn decompress(content_type: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(data.len() * 4);
    match content_type {
        "application/x-gzip" | "gzip" | "zlib" => flate2::read::ZlibDecoder::new(data)
            .read_to_end(&mut out)
            .map_err(|e| format!("zlib: {e}"))?,
        other => return Err(format!("unsupported compression {other:?}")),
    };
    Ok(out)
}

/// Compresses as kombu's `zlib` compressor does.
pub fn compress_zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    #[test]
    fn zlib_round_trip() {
        let data = b"[[1, 2], {}, {}]".repeat(10);
        let c = super::compress_zlib(&data);
        assert_eq!(super::decompress("application/x-gzip", &c).unwrap(), data);
        assert!(super::decompress("application/x-bz2", &c).is_err());
    }
}
