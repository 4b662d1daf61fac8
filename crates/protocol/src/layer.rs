//! Walking the files of an image layer: a tar archive, gzipped or not.
//!
//! This is a pure function of a byte reader; callers decide where the bytes come from (a blob
//! store, an HTTP response) and stream them, so memory stays bounded whatever the layer size.
//!
//! The tar headers are walked here rather than by the `tar` crate because that crate reads
//! GNU long-name and PAX entries into memory whole, whatever size the archive claims: a layer
//! of a few hundred KiB of gzip can declare a long name of hundreds of MiB. Here every
//! variable-sized piece of metadata is capped before anything is allocated, and entry data is
//! skipped through a fixed buffer.

use std::io::{self, BufRead, BufReader, Read};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// What walking one layer may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkLimits {
    /// Largest GNU long-name or long-link entry and largest PAX extended header read, in
    /// bytes. Real ones are a few hundred bytes; anything above ends the walk with an error.
    pub max_metadata: u64,
    /// Most bytes of tar (after gzip) read before the walk ends with an error.
    pub max_bytes: u64,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            max_metadata: 64 << 10,
            max_bytes: u64::MAX,
        }
    }
}

/// Call `visit` with the path and the reader of every entry of the layer, in archive order,
/// until it returns `ControlFlow::Break`. Gzip is detected from the magic bytes. An archive
/// that stops being readable ends the walk with an error. Metadata is capped as in
/// [`WalkLimits::default`].
pub fn walk_layer<R: Read, T>(
    reader: R,
    visit: impl FnMut(&Path, &mut dyn Read) -> ControlFlow<T>,
) -> io::Result<Option<T>> {
    walk_layer_with(reader, WalkLimits::default(), visit)
}

/// [`walk_layer`] within `limits`. Exceeding one ends the walk with an error of kind
/// [`io::ErrorKind::FileTooLarge`], so callers can tell a layer too costly to read from one
/// that is not a tar archive.
pub fn walk_layer_with<R: Read, T>(
    reader: R,
    limits: WalkLimits,
    visit: impl FnMut(&Path, &mut dyn Read) -> ControlFlow<T>,
) -> io::Result<Option<T>> {
    let mut reader = BufReader::new(reader);
    let gzipped = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut walker = Walker::new(
        Capped {
            inner: reader,
            left: limits.max_bytes,
        },
        limits.max_metadata,
    );
    walker.walk(visit)
}

fn too_large(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::FileTooLarge, what)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// A reader that fails once more than `left` bytes would be read.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // Only an error if there really is more.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(too_large("the layer is larger than the limit".into())),
            };
        }
        let n = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let got = self.inner.read(&mut buf[..n])?;
        self.left -= got as u64;
        Ok(got)
    }
}

const BLOCK: u64 = 512;

/// The tar header walk over a decompressed stream.
struct Walker<R> {
    r: R,
    max_metadata: u64,
    /// The largest metadata buffer allocated so far; never above `max_metadata`.
    largest_metadata: u64,
}

impl<R: Read> Walker<R> {
    fn new(r: R, max_metadata: u64) -> Walker<R> {
        Walker {
            r,
            max_metadata,
            largest_metadata: 0,
        }
    }

    /// The next 512-byte block; `None` at a clean end of input.
    fn block(&mut self) -> io::Result<Option<[u8; 512]>> {
        let mut b = [0u8; 512];
        let mut filled = 0;
        while filled < b.len() {
            match self.r.read(&mut b[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(b))
    }

    /// Skip `n` bytes without keeping them.
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.r).take(n), &mut io::sink())?;
        if copied < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// An entry's data of `size` bytes, read into memory only when it is within the cap.
    fn metadata(&mut self, size: u64, what: &str) -> io::Result<Vec<u8>> {
        if size > self.max_metadata {
            return Err(too_large(format!(
                "tar {what} of {size} bytes exceeds the limit of {} bytes",
                self.max_metadata
            )));
        }
        self.largest_metadata = self.largest_metadata.max(size);
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        (&mut self.r).take(size).read_to_end(&mut data)?;
        if (data.len() as u64) < size {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.skip(padding(size))?;
        Ok(data)
    }

    fn walk<T>(
        &mut self,
        mut visit: impl FnMut(&Path, &mut dyn Read) -> ControlFlow<T>,
    ) -> io::Result<Option<T>> {
        // Extended headers name or size the entry that follows them.
        let mut long_name: Option<Vec<u8>> = None;
        let mut pax_path: Option<Vec<u8>> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            let Some(h) = self.block()? else {
                return Ok(None);
            };
            // An all-zero block ends the archive.
            if h.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            check_checksum(&h)?;
            let own_size = numeric(&h[124..136])?;
            match h[156] {
                b'L' => {
                    long_name = Some(trim_nul(self.metadata(own_size, "long-name entry")?));
                    continue;
                }
                b'K' => {
                    // A long link target: not needed, but capped like a long name.
                    self.metadata(own_size, "long-link entry")?;
                    continue;
                }
                b'x' => {
                    let data = self.metadata(own_size, "PAX extended header")?;
                    for (key, value) in pax_records(&data)? {
                        match key {
                            b"path" => pax_path = Some(value.to_vec()),
                            b"size" => {
                                let s = std::str::from_utf8(value)
                                    .ok()
                                    .and_then(|s| s.parse::<u64>().ok())
                                    .ok_or_else(|| invalid("PAX size is not a number"))?;
                                pax_size = Some(s);
                            }
                            _ => {}
                        }
                    }
                    continue;
                }
                b'g' => {
                    self.metadata(own_size, "PAX global header")?;
                    continue;
                }
                _ => {}
            }
            let size = pax_size.take().unwrap_or(own_size);
            // Old GNU sparse files list more sparse regions in extension blocks after the
            // header.
            if h[156] == b'S' && is_gnu(&h) && h[482] != 0 {
                loop {
                    let ext = self.block()?.ok_or(io::ErrorKind::UnexpectedEof)?;
                    if ext[504] == 0 {
                        break;
                    }
                }
            }
            let path = match (long_name.take(), pax_path.take()) {
                (Some(n), _) | (None, Some(n)) => n,
                (None, None) => header_path(&h),
            };
            let path = PathBuf::from(String::from_utf8_lossy(&path).into_owned());
            let mut entry = (&mut self.r).take(size);
            if let ControlFlow::Break(t) = visit(&path, &mut entry) {
                return Ok(Some(t));
            }
            let rest = entry.limit();
            self.skip(rest)?;
            self.skip(padding(size))?;
        }
    }
}

/// Bytes after `size` bytes of data up to the next block boundary.
fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

fn is_gnu(h: &[u8; 512]) -> bool {
    &h[257..265] == b"ustar  \0"
}

fn is_ustar(h: &[u8; 512]) -> bool {
    &h[257..263] == b"ustar\0"
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// A NUL-terminated header field.
fn field(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |end| &b[..end])
}

/// The path a header names itself: POSIX ustar joins the prefix field and the name.
fn header_path(h: &[u8; 512]) -> Vec<u8> {
    let name = field(&h[0..100]);
    let prefix = if is_ustar(h) {
        field(&h[345..500])
    } else {
        &[]
    };
    if prefix.is_empty() {
        name.to_vec()
    } else {
        let mut p = prefix.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

/// A numeric header field: octal text, or GNU base-256 when the high bit is set.
fn numeric(b: &[u8]) -> io::Result<u64> {
    if b.first().is_some_and(|&c| c & 0x80 != 0) {
        let mut n: u64 = 0;
        for (i, &c) in b.iter().enumerate() {
            let c = if i == 0 { c & 0x7f } else { c };
            n = n
                .checked_mul(256)
                .and_then(|n| n.checked_add(u64::from(c)))
                .ok_or_else(|| invalid("tar number out of range"))?;
        }
        return Ok(n);
    }
    let text = field(b);
    let text = text.trim_ascii();
    if text.is_empty() {
        return Ok(0);
    }
    let mut n: u64 = 0;
    for &c in text {
        if !(b'0'..=b'7').contains(&c) {
            return Err(invalid("tar number is not octal"));
        }
        n = n
            .checked_mul(8)
            .and_then(|n| n.checked_add(u64::from(c - b'0')))
            .ok_or_else(|| invalid("tar number out of range"))?;
    }
    Ok(n)
}

/// Reject a block whose checksum does not match: it is not a tar header, and its size field
/// means nothing.
fn check_checksum(h: &[u8; 512]) -> io::Result<()> {
    let stored = numeric(&h[148..156])?;
    let sum: u64 = h[..148]
        .iter()
        .chain(&[b' '; 8])
        .chain(&h[156..])
        .map(|&b| u64::from(b))
        .sum();
    if sum != stored {
        return Err(invalid("tar header checksum mismatch"));
    }
    Ok(())
}

/// The `key=value` records of a PAX extended header (`<length> <key>=<value>\n` each).
fn pax_records(mut data: &[u8]) -> io::Result<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    let bad = || invalid("malformed PAX extended header");
    while !data.is_empty() {
        // Trailing NUL padding ends the records.
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let space = data.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        out.push((&record[..eq], &record[eq + 1..]));
        data = &data[len..];
    }
    Ok(out)
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

/// A GNU tar header of type `kind` declaring `size` bytes, with a valid checksum, for tests
/// that need archives the `tar` crate would refuse to write.
#[cfg(any(test, feature = "test-util"))]
pub fn tar_header(name: &str, kind: u8, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(99);
    h[..n].copy_from_slice(&name.as_bytes()[..n]);
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    if size < 8u64.pow(11) {
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    } else {
        // GNU base-256 for sizes octal cannot hold.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[257..265].copy_from_slice(b"ustar  \0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, data).unwrap();
        gz.finish().unwrap()
    }

    /// Every path of `layer`, in order, or the error that ended the walk.
    fn paths(layer: &[u8], limits: WalkLimits) -> io::Result<Vec<String>> {
        let mut seen = vec![];
        walk_layer_with(layer, limits, |p, _| {
            seen.push(p.display().to_string());
            ControlFlow::<()>::Continue(())
        })?;
        Ok(seen)
    }

    #[test]
    fn walks_plain_and_gzipped_layers() {
        let plain = tar_with(&[("a/b.txt", "one"), ("c.txt", "two")]);
        let gz = gzip(&plain);
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

    /// GNU long names, PAX paths (and sizes), ustar prefixes, directories and links, as the
    /// `tar` crate writes them.
    fn varied_archive() -> (Vec<u8>, Vec<String>) {
        let long = format!("{}/file.txt", "d".repeat(150));
        let prefixed = format!("{}/{}", "p".repeat(120), "name.txt");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        b.append_data(&mut h, "dir/", std::io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
        // The tar crate writes no PAX headers; this is what GNU tar and Go's archive/tar do.
        let record = "36 path=pax/named/by/extension.json\n";
        assert_eq!(record.len(), 36);
        let raw = b.get_mut();
        raw.extend_from_slice(&tar_header("PaxHeader", b'x', record.len() as u64));
        raw.extend_from_slice(record.as_bytes());
        raw.resize(raw.len() + padding(record.len() as u64) as usize, 0);
        let mut h = tar::Header::new_ustar();
        h.set_size(700);
        h.set_mode(0o644);
        b.append_data(&mut h, "short", &[7u8; 700][..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_path(&prefixed).unwrap();
        h.set_cksum();
        b.append(&h, &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", "x".repeat(200)).unwrap();
        let archive = b.into_inner().unwrap();
        let expected = vec![
            "dir/".to_owned(),
            long,
            "pax/named/by/extension.json".to_owned(),
            prefixed,
            "link".to_owned(),
        ];
        (archive, expected)
    }

    #[test]
    fn long_names_pax_paths_and_ustar_prefixes_are_read() {
        let (archive, expected) = varied_archive();
        assert_eq!(paths(&archive, WalkLimits::default()).unwrap(), expected);
        assert_eq!(
            paths(&gzip(&archive), WalkLimits::default()).unwrap(),
            expected
        );
        // The data after a PAX header is the entry's, whole.
        let data = walk_layer(&archive[..], |p, r| {
            if p.ends_with("extension.json") {
                let mut v = vec![];
                r.read_to_end(&mut v).unwrap();
                ControlFlow::Break(v)
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap()
        .unwrap();
        assert_eq!(data, vec![7u8; 700]);
    }

    #[test]
    fn a_huge_long_name_is_refused_before_it_is_read() {
        // 400 MB declared, none of it present: the walk must stop at the header, not try to
        // read (or allocate) the name.
        for kind in [b'L', b'K', b'x', b'g'] {
            let h = tar_header("././@LongLink", kind, 400 << 20);
            let e = paths(&h, WalkLimits::default()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::FileTooLarge, "{e}");
            assert!(e.to_string().contains("419430400 bytes"), "{e}");
        }
        // Base-256 sizes too.
        let h = tar_header("././@LongLink", b'L', 1 << 40);
        assert_eq!(
            paths(&h, WalkLimits::default()).unwrap_err().kind(),
            io::ErrorKind::FileTooLarge
        );
        // And one just within the cap is read.
        let limits = WalkLimits {
            max_metadata: 1024,
            ..WalkLimits::default()
        };
        let mut archive = tar_header("././@LongLink", b'L', 1024).to_vec();
        archive.extend_from_slice(&[b'n'; 1024]);
        archive.extend_from_slice(&tar_header("ignored", b'0', 0));
        assert_eq!(paths(&archive, limits).unwrap(), ["n".repeat(1024)]);
        archive[124..136].copy_from_slice(&tar_header("", b'L', 1025)[124..136]);
        let sum = &tar_header("././@LongLink", b'L', 1025)[148..156];
        archive[148..156].copy_from_slice(sum);
        assert_eq!(
            paths(&archive, limits).unwrap_err().kind(),
            io::ErrorKind::FileTooLarge
        );
    }

    #[test]
    fn entry_data_is_skipped_and_the_byte_limit_holds() {
        let big = "z".repeat(64 << 10);
        let archive = tar_with(&[("a", &big), ("b", "x")]);
        let limits = |max_bytes| WalkLimits {
            max_bytes,
            ..WalkLimits::default()
        };
        assert_eq!(
            paths(&archive, limits(archive.len() as u64)).unwrap(),
            ["a", "b"]
        );
        for layer in [archive.clone(), gzip(&archive)] {
            let e = paths(&layer, limits(10_000)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::FileTooLarge, "{e}");
        }
    }

    /// Walk `input` with a small metadata cap, reading every entry's data, and check that
    /// it neither panics nor buffers more than the cap; returns the paths seen.
    fn walk_garbled(input: &[u8]) -> (io::Result<Option<()>>, Vec<String>) {
        const CAP: u64 = 1024;
        let mut walker = Walker::new(input, CAP);
        let mut seen = vec![];
        let r = walker.walk(|p, r| {
            seen.push(p.display().to_string());
            // Entry readers are bounded by the entry, and read to their end.
            let mut buf = [0u8; 4096];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            ControlFlow::Continue(())
        });
        assert!(
            walker.largest_metadata <= CAP,
            "buffered {} bytes",
            walker.largest_metadata
        );
        (r, seen)
    }

    #[test]
    fn truncated_archives_end_with_an_error_or_a_prefix_of_the_entries() {
        let (archive, expected) = varied_archive();
        for len in 0..archive.len() {
            let (r, seen) = walk_garbled(&archive[..len]);
            assert!(
                expected.starts_with(&seen),
                "cut at {len}: saw {seen:?}, not a prefix of {expected:?}"
            );
            // A cut inside a block, or before the last entry's data ends, is an error.
            if len % 512 != 0 && len < archive.len() - 1024 {
                assert!(r.is_err(), "cut at {len} read as complete: {seen:?}");
            }
        }
        let gz = gzip(&archive);
        for len in 0..gz.len() {
            let _ = walk_layer_with(&gz[..len], WalkLimits::default(), |_, _| {
                ControlFlow::<()>::Continue(())
            });
        }
    }

    #[test]
    fn every_single_byte_corruption_of_the_headers_is_survived() {
        let (archive, _) = varied_archive();
        for pos in 0..archive.len() {
            for flip in [0xff, 0x80, 0x01] {
                let mut bad = archive.clone();
                bad[pos] ^= flip;
                let _ = walk_garbled(&bad);
            }
        }
    }

    #[test]
    fn random_headers_with_valid_checksums_are_survived() {
        // xorshift: deterministic, so a failure reproduces.
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let kinds = [b'0', b'5', b'L', b'K', b'x', b'g', b'S', b'2', 0, 0xff];
        let mut refused_for_size = 0;
        for _ in 0..20_000 {
            let mut input = vec![];
            for _ in 0..(next() % 4 + 1) {
                let kind = kinds[(next() % kinds.len() as u64) as usize];
                let size = match next() % 4 {
                    0 => next() % 2048,
                    1 => next() % (1 << 33),
                    2 => next(),
                    _ => 0,
                };
                let mut h = tar_header("n", kind, size);
                if next() % 3 == 0 {
                    // PAX-looking records, well-formed or not.
                    let record: &[u8] = match next() % 4 {
                        0 => b"30 path=some/where/else.json\n",
                        1 => b"14 size=99999\n",
                        2 => b"99 path=x\n",
                        _ => b"1 =\n",
                    };
                    input.extend_from_slice(&h);
                    input.extend_from_slice(record);
                    continue;
                }
                if next() % 5 == 0 {
                    // Garbage in the rest of the header, checksum fixed up.
                    for b in &mut h[257..500] {
                        *b = next() as u8;
                    }
                    h[148..156].copy_from_slice(b"        ");
                    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
                    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
                }
                input.extend_from_slice(&h);
                let data = (next() % 1500) as usize;
                input.extend((0..data).map(|_| next() as u8));
            }
            let (r, _) = walk_garbled(&input);
            if let Err(e) = r
                && e.kind() == io::ErrorKind::FileTooLarge
            {
                refused_for_size += 1;
            }
        }
        // The generator does reach the cap.
        assert!(refused_for_size > 100, "{refused_for_size}");
    }
}
