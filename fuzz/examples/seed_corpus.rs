//! Writes the seed corpus, `corpus/<target>/seed-*`, from `src/seeds.rs`:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus
//! ```
//!
//! Files the fuzzer added (named by their SHA-1) are left alone.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, _) in sky_fuzz::TARGETS {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let stale = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"));
            if stale {
                std::fs::remove_file(path)?;
            }
        }
        let seeds = sky_fuzz::seeds::for_target(target);
        let bytes: usize = seeds.iter().map(|(_, b)| b.len()).sum();
        for (name, data) in &seeds {
            std::fs::write(dir.join(name), data)?;
        }
        println!("{target}: {} seeds, {bytes} bytes", seeds.len());
    }
    Ok(())
}
