//! libgit2's lazy TLS start (`fermata::libgit2`): it must still verify an
//! HTTPS server against the system's hashed certificate directory, and must
//! not have read the bundle file. libgit2 starts once per process, so each
//! case runs in a child process (this test binary, its ignored `child` test).
//! The server is `openssl s_server` on 127.0.0.1 with a CA made here.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CASE: &str = "FERMATA_TEST_TLS_CASE";

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A CA, a server certificate for 127.0.0.1 signed by it, and a second CA
/// that signs nothing (a bundle that does not trust the server).
fn certificates(dir: &Path) {
    for ca in ["ca", "other"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=fermata test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
}

/// A directory in OpenSSL's hashed layout holding `ca`.
fn hashed_dir(dir: &Path, name: &str, ca: &str) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let hash = openssl(dir, &["x509", "-hash", "-noout", "-in", ca]);
    std::fs::copy(dir.join(ca), out.join(format!("{hash}.0"))).unwrap();
    out
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path) -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .current_dir(dir)
        .args([
            "s_server",
            "-quiet",
            "-www",
            "-cert",
            "server.pem",
            "-key",
            "server.key",
        ])
        .args(["-accept", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s_server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, port)
}

/// Runs one case in a child process with `vars` (and neither certificate
/// variable unless `vars` sets it); returns what its `child` test printed.
fn case(vars: &[(&str, String)]) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(CASE, "1")
    .env_remove("SSL_CERT_FILE")
    .env_remove("SSL_CERT_DIR");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{vars:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_lazy_start_verifies_against_the_hashed_directory_and_never_reads_the_bundle() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    certificates(d);
    let trusting = hashed_dir(d, "trusting", "ca.pem");
    let other = hashed_dir(d, "other-certs", "other.pem");
    let (_server, port) = serve(d);
    let url = format!("https://127.0.0.1:{port}/fleet.git");
    let vars = |bundle: &str, dir: &Path| {
        vec![
            ("FERMATA_TEST_URL", url.clone()),
            ("FERMATA_TEST_BUNDLE", d.join(bundle).display().to_string()),
            ("FERMATA_TEST_DIR", dir.display().to_string()),
        ]
    };

    // The server's CA only in the hashed directory: the handshake passes
    // (the fetch fails later: s_server is not a git server).
    let out = case(&vars("other.pem", &trusting));
    assert!(out.contains("verified: true"), "{out}");
    // Child processes see the bundle, as git2 itself would have set it.
    assert!(
        out.contains(&format!("SSL_CERT_FILE={}", d.join("other.pem").display())),
        "{out}"
    );

    // The server's CA only in the bundle: refused, so the bundle was not read.
    let out = case(&vars("ca.pem", &other));
    assert!(out.contains("verified: false"), "{out}");

    // The user named the bundle: it is read, as before.
    let mut named = vars("ca.pem", &other);
    named.push(("SSL_CERT_FILE", d.join("ca.pem").display().to_string()));
    let out = case(&named);
    assert!(out.contains("verified: true"), "{out}");
}

/// One case, in a child process started by the test above.
#[test]
#[ignore = "run by a_lazy_start_verifies_against_the_hashed_directory_and_never_reads_the_bundle"]
fn child() {
    if std::env::var(CASE).is_err() {
        panic!("only run as a child of the test above");
    }
    let var = |k: &str| std::env::var(k).unwrap();
    fermata::libgit2::start_with(
        std::env::var_os("SSL_CERT_FILE"),
        std::env::var_os("SSL_CERT_DIR"),
        openssl_probe::ProbeResult {
            cert_file: Some(var("FERMATA_TEST_BUNDLE").into()),
            cert_dir: Some(var("FERMATA_TEST_DIR").into()),
        },
    );
    println!(
        "SSL_CERT_FILE={}",
        std::env::var("SSL_CERT_FILE").unwrap_or_default()
    );
    let mut remote = git2::Remote::create_detached(var("FERMATA_TEST_URL")).unwrap();
    let err = remote
        .connect(git2::Direction::Fetch)
        .expect_err("s_server is not a git server");
    let refused =
        err.code() == git2::ErrorCode::Certificate || err.class() == git2::ErrorClass::Ssl;
    println!("error: {err}");
    println!("verified: {}", !refused);
}
