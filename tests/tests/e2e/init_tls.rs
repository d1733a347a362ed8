//! `letterme init` writes a config, generates the domain key and a certificate, prints the
//! DNS record; `letterme serve` then speaks TLS with that certificate.
#![allow(clippy::unwrap_used)]

use letterme_tests::{ServerProc, free_port, letterme_bin, ok, user_error};

fn run(args: &[&str], cwd: &std::path::Path) -> std::process::Output {
    std::process::Command::new(letterme_bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("LETTERME_LOG")
        .output()
        .unwrap()
}

#[test]
fn init_then_serve_over_tls() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let smtp_listen = format!("127.0.0.1:{}", free_port());
    let federation = format!("127.0.0.1:{}", free_port());
    let url = format!("https://127.0.0.1:{port}");
    let config = root.path().join("letterme.toml");
    let data = root.path().join("data");
    let args = [
        "init",
        "--domain",
        "Example.TEST",
        "--config",
        config.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--http-listen",
        &listen,
        "--public-url",
        &url,
        "--smtp-listen",
        &smtp_listen,
        "--federation-listen",
        &federation,
    ];
    let out = ok(&run(&args, root.path()));
    assert!(
        out.contains("_mailx.example.test. 3600 IN TXT \"v=mailx1; k="),
        "{out}"
    );
    // The record names the federation endpoint, and `letterme dns` prints the same one.
    assert!(
        out.contains(&format!("e=https://{federation}; fp=")),
        "{out}"
    );
    let record = out
        .lines()
        .find(|l| l.starts_with("_mailx."))
        .unwrap()
        .to_owned();
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("domain = \"example.test\""), "{text}");
    assert!(text.contains("[http.tls]"), "{text}");
    let key = std::fs::read_to_string(data.join("tls/key.pem")).unwrap();
    assert!(key.contains("PRIVATE KEY"));
    assert!(!text.contains(&key), "the config holds paths, not the key");

    // Running init again never overwrites.
    let e = user_error(&run(&args, root.path()));
    assert!(e.contains("already exists"), "{e}");

    let server = ServerProc::spawn(config.clone(), data.clone());
    assert_eq!(server.url, url);
    assert_eq!(
        server.federation.as_deref(),
        Some(format!("https://{federation}").as_str())
    );
    let dns = ok(&run(
        &["dns", "--config", config.to_str().unwrap()],
        root.path(),
    ));
    assert!(dns.lines().any(|l| l == record), "{dns}\n{record}");
    let cert = std::fs::read(data.join("tls/cert.pem")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let https = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
            .min_tls_version(reqwest::tls::Version::TLS_1_3)
            .build()
            .unwrap();
        let r = https.get(format!("{url}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let info: serde_json::Value = https
            .get(format!("{url}/v1/server"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(info["domain"], "example.test");
        // Without the certificate pinned, the self-signed server is not trusted.
        assert!(reqwest::get(format!("{url}/healthz")).await.is_err());
        // Plain HTTP on the TLS port gets no HTTP answer.
        assert!(
            reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
                .await
                .is_err()
        );
    });

    // SIGTERM: a graceful stop with exit status 0.
    let mut server = server;
    let pid = server.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn plain_http_off_loopback_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("c.toml");
    std::fs::write(
        &config,
        "domain = \"x.test\"\ndata_dir = \"d\"\n[http]\nlisten = \"0.0.0.0:8080\"\n",
    )
    .unwrap();
    let e = user_error(&run(
        &["serve", "--config", config.to_str().unwrap()],
        root.path(),
    ));
    assert!(e.contains("plain HTTP is allowed only on loopback"), "{e}");

    std::fs::write(&config, "domain = \"x.test\"\nbogus = 1\n").unwrap();
    let e = user_error(&run(
        &["serve", "--config", config.to_str().unwrap()],
        root.path(),
    ));
    assert!(e.contains("unknown field `bogus`"), "{e}");

    let e = user_error(&run(&["serve", "--config", "missing.toml"], root.path()));
    assert!(
        e.contains("cannot read the config file missing.toml"),
        "{e}"
    );
}
