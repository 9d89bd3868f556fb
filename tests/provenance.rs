//! The vendored captures are byte-for-byte the files listed in their PROVENANCE.md, so tests
//! run on real, unedited data.

use std::path::Path;

use sha2::{Digest, Sha256};

#[test]
fn vendored_real_data_matches_its_published_checksums() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/real");
    let provenance = std::fs::read_to_string(root.join("PROVENANCE.md")).unwrap();
    let mut checked = 0;
    for line in provenance.lines() {
        let Some((sum, path)) = line.split_once("  ./") else {
            continue;
        };
        if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let bytes = std::fs::read(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        let actual: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(actual, sum, "{path} differs from its published checksum");
        checked += 1;
    }
    assert_eq!(checked, 32, "every listed file was checked");
}
