//! Walking the files of an image layer: a tar archive, gzipped or not.
//!
//! This is a pure function of a byte reader; callers decide where the bytes come from (a blob
//! store, an HTTP response) and stream them, so memory stays bounded whatever the layer size.

use std::io::{BufRead, BufReader, Read};
use std::ops::ControlFlow;
use std::path::Path;

/// Call `visit` with the path and the reader of every entry of the layer, in archive order,
/// until it returns `ControlFlow::Break`. Gzip is detected from the magic bytes. An archive
/// that stops being readable ends the walk with an error.
pub fn walk_layer<R: Read, T>(
    reader: R,
    mut visit: impl FnMut(&Path, &mut dyn Read) -> ControlFlow<T>,
) -> std::io::Result<Option<T>> {
    let mut reader = BufReader::new(reader);
    let gzipped = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if let ControlFlow::Break(t) = visit(&path, &mut entry) {
            return Ok(Some(t));
        }
    }
    Ok(None)
}

/// A tar archive of `files` (name, content), for tests of anything that reads layers.
#[cfg(any(test, feature = "test-util"))]
pub fn tar_with(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        // Appending to a Vec cannot fail.
        let _ = b.append_data(&mut h, name, content.as_bytes());
    }
    b.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_plain_and_gzipped_layers() {
        let plain = tar_with(&[("a/b.txt", "one"), ("c.txt", "two")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &plain).unwrap();
        let gz = gz.finish().unwrap();
        for layer in [&plain, &gz] {
            let mut seen = vec![];
            let r: Option<()> = walk_layer(&layer[..], |p, _| {
                seen.push(p.display().to_string());
                ControlFlow::Continue(())
            })
            .unwrap();
            assert!(r.is_none());
            assert_eq!(seen, ["a/b.txt", "c.txt"]);
        }
        let found = walk_layer(&plain[..], |p, r| {
            if p == Path::new("c.txt") {
                let mut s = String::new();
                r.read_to_string(&mut s).unwrap();
                ControlFlow::Break(s)
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert_eq!(found.as_deref(), Some("two"));
        assert!(
            walk_layer(
                &b"definitely not a tar archive, far too short"[..],
                |_, _| ControlFlow::<()>::Continue(())
            )
            .is_err()
        );
    }
}
