# Shared by the scripts (sourced): where cargo puts release binaries. Asking cargo, not
# assuming ./target, keeps the scripts working with CARGO_TARGET_DIR set.
release_dir() {
  cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"] + "/release")'
}
