//! The multipart message the federation and outbound-relay scenarios send with
//! `letterme send --html --attach`: text with an HTML alternative, a 200 KB binary file, a
//! file with a non-ASCII name and a text file with bare LF line ends, with canaries in the
//! HTML, the name and the bytes. What arrives is read by python's email package, a mail
//! client's parser other than the one letter.me uses, and must be the same parts with the
//! same decoded bytes and names.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::{contains, files_under, python};

/// Reads a message as a mail client would and describes its parts as JSON.
const PARTS: &str = include_str!("../fixtures/mime_parts.py");

/// In the HTML alternative.
const HTML_CANARY: &str = "CANARY-HTML-3e7a";
/// In the non-ASCII file name.
const NAME_CANARY: &str = "CANARY-NAME-b41f";
/// Inside the binary file's bytes.
const BYTES_CANARY: &str = "CANARY-BYTES-9c2d";

/// Where [`BYTES_CANARY`] is in the binary file.
const BYTES_AT: usize = 100_000;

/// Every canary of the message: none may be readable where a server keeps anything.
const CANARIES: [&str; 3] = [HTML_CANARY, NAME_CANARY, BYTES_CANARY];

/// The binary file: 1.5 MiB of deterministic pseudo-random bytes (xorshift64), with
/// [`BYTES_CANARY`] at [`BYTES_AT`].
fn binary_file() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut data: Vec<u8> = (0..1536 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect();
    data[BYTES_AT..BYTES_AT + BYTES_CANARY.len()].copy_from_slice(BYTES_CANARY.as_bytes());
    data
}

/// The canary's bytes as they travel in the message: base64, as written in the part (76
/// characters a line; 24 of them from a 3-byte boundary inside the canary, within one
/// line), so a copy of the part's body as written is caught too.
fn encoded_bytes_canary() -> String {
    let start = BYTES_AT.next_multiple_of(3);
    let chars = start / 3 * 4;
    assert!(chars % 76 + 24 <= 76, "the window crosses a line break");
    STANDARD.encode(&binary_file()[start..start + 18])
}

/// The message's HTML and files, written where `letterme send` reads them.
#[derive(Debug)]
pub struct Multipart {
    dir: PathBuf,
    html: String,
    files: Vec<Attached>,
}

/// A file attached to the message.
#[derive(Debug)]
struct Attached {
    name: String,
    /// The type `letterme send` gives it by its extension.
    content_type: &'static str,
    bytes: Vec<u8>,
}

/// One leaf part as a mail client decodes it.
struct Part {
    content_type: String,
    disposition: Option<String>,
    name: Option<String>,
    bytes: Vec<u8>,
}

impl Part {
    /// Everything but the bytes, for a readable comparison.
    fn layout(&self) -> (&str, Option<&str>, Option<&str>, usize) {
        (
            self.content_type.as_str(),
            self.disposition.as_deref(),
            self.name.as_deref(),
            self.bytes.len(),
        )
    }
}

impl Multipart {
    /// Writes the HTML and the files into `dir` (created).
    pub fn write(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let html = format!(
            "<html><body><p>Grüße an alle – die Messdaten hängen an. <b>{HTML_CANARY}</b></p></body></html>"
        );
        // Deterministic pseudo-random bytes (xorshift64): NUL, CR, LF and bytes over 127
        // all occur, so only a byte-exact transfer encoding carries them. 1.5 MiB: over
        // the size at which a part goes as a blob, so the message shows that it crosses
        // domains as a blob and still leaves by relay whole.
        let data = binary_file();
        let files = vec![
            Attached {
                name: "measurements.bin".to_owned(),
                content_type: "application/octet-stream",
                bytes: data,
            },
            Attached {
                name: format!("Grüße – Übersicht {NAME_CANARY}.txt"),
                content_type: "text/plain",
                bytes: "Viele Grüße aus dem Anhang.\n".as_bytes().to_vec(),
            },
            // ASCII with bare LF line ends, as text files are: it must still cross SMTP.
            Attached {
                name: "notes.txt".to_owned(),
                content_type: "text/plain",
                bytes: b"first line\nsecond line\n".to_vec(),
            },
        ];
        std::fs::write(dir.join("body.html"), &html).unwrap();
        for f in &files {
            std::fs::write(dir.join(&f.name), &f.bytes).unwrap();
        }
        Self {
            dir: dir.to_owned(),
            html,
            files,
        }
    }

    /// `--html PATH --attach PATH...` for `letterme send`.
    pub fn args(&self) -> Vec<String> {
        let path = |name: &str| self.dir.join(name).to_str().unwrap().to_owned();
        let mut args = vec!["--html".to_owned(), path("body.html")];
        for f in &self.files {
            args.extend(["--attach".to_owned(), path(&f.name)]);
        }
        args
    }

    /// `raw`, a whole message as `what` received it, is from `from` and holds `text`, its
    /// HTML alternative and every file, part for part: the same types, dispositions,
    /// file names and decoded bytes, and nothing a mail client's parser calls a defect.
    pub fn assert_carried_by(&self, raw: &[u8], from: &str, text: &str, what: &str) {
        let eml = self.dir.join("received.eml");
        std::fs::write(&eml, raw).unwrap();
        assert!(
            contains(raw, encoded_bytes_canary().as_bytes()),
            "{what}: the file's canary as base64 is not in the message (the scan for it would see nothing)"
        );
        let got = python(PARTS, &[eml.to_str().unwrap()]);
        assert_eq!(got["from"], serde_json::json!([from]), "{what}");
        assert_eq!(got["type"], "multipart/mixed", "{what}");
        assert_eq!(got["defects"], serde_json::json!([]), "{what}");
        let parts: Vec<Part> = got["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| Part {
                content_type: p["type"].as_str().unwrap().to_owned(),
                disposition: p["disposition"].as_str().map(ToOwned::to_owned),
                name: p["filename"].as_str().map(ToOwned::to_owned),
                bytes: STANDARD.decode(p["data"].as_str().unwrap()).unwrap(),
            })
            .collect();
        let inline = |content_type: &str, bytes: &[u8]| Part {
            content_type: content_type.to_owned(),
            disposition: None,
            name: None,
            bytes: bytes.to_vec(),
        };
        let mut want = vec![
            inline("text/plain", text.as_bytes()),
            inline("text/html", self.html.as_bytes()),
        ];
        want.extend(self.files.iter().map(|f| Part {
            content_type: f.content_type.to_owned(),
            disposition: Some("attachment".to_owned()),
            name: Some(f.name.clone()),
            bytes: f.bytes.clone(),
        }));
        assert_eq!(
            parts.iter().map(Part::layout).collect::<Vec<_>>(),
            want.iter().map(Part::layout).collect::<Vec<_>>(),
            "{what}: every part in order (type, disposition, file name, decoded size)"
        );
        for (part, sent) in parts.iter().zip(&want) {
            assert!(
                part.bytes == sent.bytes,
                "{what}: the {} part {:?} arrived with other bytes than were sent",
                sent.content_type,
                sent.name
            );
        }
    }
}

/// No canary of the message is readable anywhere under `dir` (a server's data directory:
/// database, WAL, log). `stored`, something the server keeps in the clear, shows that the
/// scan reads what is there.
pub fn assert_unreadable_under(dir: &Path, stored: &str) {
    let files = files_under(dir);
    assert!(
        files.iter().any(|(_, b)| contains(b, stored.as_bytes())),
        "the scan of {} finds {stored}",
        dir.display()
    );
    let encoded = encoded_bytes_canary();
    for canary in CANARIES.iter().copied().chain([encoded.as_str()]) {
        for (path, bytes) in &files {
            assert!(
                !contains(bytes, canary.as_bytes()),
                "{canary} readable in {}",
                path.display()
            );
        }
    }
}
