//! The fuzz corpora (`fuzz/corpus/<target>`) and every input that ever crashed a target
//! (`fuzz/regressions/<target>`), replayed through the same entry points `make fuzz` drives:
//! a crash found once stays a failing test until it is fixed.

use std::collections::BTreeSet;
use std::path::Path;

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_target_is_built_and_seeded() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let targets: BTreeSet<String> = pushlite::fuzz::TARGETS
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    let binaries: BTreeSet<String> = names_in(&fuzz.join("fuzz_targets"))
        .into_iter()
        .filter_map(|file| file.strip_suffix(".rs").map(str::to_owned))
        .collect();
    assert_eq!(
        binaries, targets,
        "fuzz/fuzz_targets and pushlite::fuzz::TARGETS differ"
    );
    for target in &targets {
        assert!(
            !names_in(&fuzz.join("corpus").join(target)).is_empty(),
            "fuzz/corpus/{target} holds no seed"
        );
    }
}

#[test]
fn corpora_and_regressions_replay_without_a_panic() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (name, target) in pushlite::fuzz::TARGETS {
        for kind in ["corpus", "regressions"] {
            let dir = fuzz.join(kind).join(name);
            for file in names_in(&dir) {
                let data = std::fs::read(dir.join(&file)).expect("readable corpus file");
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(
                    outcome.is_ok(),
                    "{name} panics on fuzz/{kind}/{name}/{file}"
                );
                replayed += 1;
            }
        }
    }
    assert!(replayed >= pushlite::fuzz::TARGETS.len());
}
