//! Plugin authors outside this repository: a plugin made from the template, and the
//! README's own example copied verbatim, each built as an outside crate against
//! protocol-api, then loaded by the daemon and switched to.

use crate::support::{upgrade_request, Daemon};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Builds (and with `test`, first tests) the crate in `dir` in a target folder shared by
/// these tests; returns the library it made.
fn cargo(dir: &Path, test: bool, library: &str) -> PathBuf {
    let target = workspace().join("target").join("it-sdk");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let steps: &[&str] = if test { &["test", "build"] } else { &["build"] };
    for step in steps {
        let output = Command::new(&cargo)
            .current_dir(dir)
            .args([*step, "--quiet", "--offline", "--target-dir"])
            .arg(&target)
            .output()
            .expect("run cargo");
        assert!(
            output.status.success(),
            "cargo {step} in {}:\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    target.join("debug").join(library)
}

#[test]
fn a_plugin_made_from_the_template_tests_builds_and_loads() {
    let folder = tempfile::tempdir().unwrap();
    let made = Command::new("bash")
        .arg(workspace().join("templates/new-plugin.sh"))
        .args(["hello-plugin"])
        .arg(folder.path())
        .output()
        .expect("run new-plugin.sh");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let library = cargo(
        &folder.path().join("hello-plugin"),
        true,
        "libhello_plugin.so",
    );
    let daemon = Daemon::builder().library_file(&library).start();
    let mut client = daemon.client();
    client.send(format!("{}early", upgrade_request("/", "hello-plugin")));
    assert_eq!(client.response().status, 101);
    assert_eq!(client.read_exact(5), b"early");
    client.send("later");
    assert_eq!(client.read_exact(5), b"later");
    // The template's metric, under the plugin's name.
    daemon
        .wait_for_metric("switchyard_hello_plugin_connections_total 1")
        .unwrap_or_else(|text| panic!("{text}"));
}

/// The first `rust` and `toml` blocks after `## Write a plugin` in README.md.
fn readme_example() -> (String, String) {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let section = readme
        .split("## Write a plugin")
        .nth(1)
        .expect("a Write a plugin section");
    let block = |fence: &str| {
        let start = section.find(fence).expect(fence) + fence.len();
        let end = start + section[start..].find("\n```").expect("the block's end");
        section[start..end].trim_start_matches('\n').to_string()
    };
    (block("```rust"), block("```toml"))
}

#[test]
fn the_readme_example_builds_outside_the_workspace_and_loads() {
    let (code, manifest) = readme_example();
    let folder = tempfile::tempdir().unwrap();
    let api = workspace().join("protocol-api");
    // An outside author's crate: the README's manifest lines, with the path to
    // protocol-api where this checkout has it.
    let manifest = manifest.replace("../../protocol-api", api.to_str().unwrap());
    assert!(
        manifest.contains(api.to_str().unwrap()),
        "the README's example depends on protocol-api by path: {manifest}"
    );
    std::fs::write(
        folder.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"readme-example\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n{manifest}\n\n[workspace]\n"
        ),
    )
    .unwrap();
    std::fs::create_dir(folder.path().join("src")).unwrap();
    std::fs::write(folder.path().join("src/lib.rs"), &code).unwrap();
    let library = cargo(folder.path(), false, "libreadme_example.so");
    let daemon = Daemon::builder().library_file(&library).start();
    let mut client = daemon.client();
    client.send(upgrade_request("/", "echo"));
    assert_eq!(client.response().status, 101);
    client.send("as the README says");
    assert_eq!(client.read_exact(18), b"as the README says");
    let logs = daemon.logs();
    assert!(logs.contains("readme-example 0.1.0"), "{logs}");
}
