//! The official `openai` Python SDK as a real client against a running server.

use crate::helpers::*;

#[test]
fn the_openai_python_sdk_gets_float_base64_and_shortened_embeddings() {
    let server = TestServer::shared();
    let output = std::process::Command::new(python())
        .arg(repo().join("tests/openai_client.py"))
        .arg(server.url("/v1"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "openai client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
