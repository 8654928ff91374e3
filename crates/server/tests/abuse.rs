//! `veetance serve` under abuse (issue 20, item 4): many connections, clients that never finish
//! a request, oversized and malformed bodies, path tricks, cross-site requests, bad tokens and
//! malformed WebSocket frames. Each is refused with the right status, nothing is read or
//! written outside the server's folders, and the server goes on serving a normal client.
//! Raw sockets (std `TcpStream`) send what no well-behaved client library would.
//! docs/reliability.md ("Server abuse") tabulates what is sent and what comes back.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use veetance_server::{Limits, ServeOptions, Server, ServerHandle};

// ------------------------------------------------------------------------- server

struct TestServer {
    handle: Option<ServerHandle>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    http: Client,
}

impl TestServer {
    fn start_with(configure: impl FnOnce(&mut ServeOptions)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut options = ServeOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            models_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/tiny-models"),
            out_dir: dir.path().join("output"),
            input_dir: dir.path().join("input"),
            temp_dir: dir.path().join("temp"),
            state_dir: dir.path().join("state"),
            user_dir: dir.path().join("user"),
            ..ServeOptions::default()
        };
        configure(&mut options);
        let handle = Server::start(options).expect("the server starts");
        let addr = handle.addr();
        TestServer {
            handle: Some(handle),
            dir,
            addr,
            http: Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn status(&self, path: &str) -> StatusCode {
        self.http.get(self.url(path)).send().unwrap().status()
    }

    /// A normal client is still served: `/prompt` and `/queue` answer 200.
    fn assert_serving(&self) {
        let started = Instant::now();
        assert_eq!(self.status("/prompt"), StatusCode::OK);
        assert_eq!(self.status("/queue"), StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a normal client waited {:?}",
            started.elapsed()
        );
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.shutdown();
        }
    }
}

fn with_timeouts(header: Duration, body: Duration) -> impl FnOnce(&mut ServeOptions) {
    move |o: &mut ServeOptions| {
        o.limits = Limits {
            header_timeout: header,
            body_timeout: body,
            ..Limits::default()
        }
    }
}

/// Reads until the server closes the connection; what it sent, and how long it took.
fn read_to_close(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "the server did not close the connection within {:?}: {e}",
                started.elapsed()
            ),
        }
    }
    (out, started.elapsed())
}

/// The status code and JSON body of a raw HTTP/1.1 response.
fn parse_response(bytes: &[u8]) -> (u16, Json) {
    let text = String::from_utf8_lossy(bytes);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Json::Null))
}

#[cfg(unix)]
fn raise_fd_limit(needed: u64) {
    let (soft, _) = veetance_server::raise_open_file_limit().expect("an open-file limit");
    assert!(
        soft >= needed,
        "this test needs {needed} open files and the hard limit allows {soft}"
    );
}

// ------------------------------------------------------------------------- connections

#[cfg(unix)]
#[test]
fn a_thousand_idle_connections_do_not_stop_a_normal_client_and_are_closed_by_the_header_timeout() {
    // Client and server sides of 1,000 connections live in this process.
    raise_fd_limit(2_300);
    let server = TestServer::start_with(with_timeouts(
        Duration::from_secs(2),
        Duration::from_secs(60),
    ));
    let mut idle: Vec<TcpStream> = (0..1000)
        .map(|i| {
            let mut s = server.connect();
            // Half say nothing; half start a request and never finish its head.
            if i % 2 == 1 {
                s.write_all(b"GET /queue HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                    .unwrap();
            }
            s
        })
        .collect();
    let opened = Instant::now();
    server.assert_serving();
    // Wait for the header timeout, then every one of the 1,000 is closed by the server.
    for s in &mut idle {
        let (sent, _) = read_to_close(s);
        assert!(
            sent.is_empty() || String::from_utf8_lossy(&sent).starts_with("HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&sent)
        );
    }
    let closed_after = opened.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(8),
        "closed after {closed_after:?}; the header timeout is 2 s"
    );
    server.assert_serving();
}

#[test]
fn at_the_connection_cap_a_new_client_waits_for_a_slot_instead_of_being_refused() {
    let server = TestServer::start_with(|o| {
        o.limits = Limits {
            connections: 4,
            header_timeout: Duration::from_secs(1),
            ..Limits::default()
        }
    });
    let _idle: Vec<TcpStream> = (0..4).map(|_| server.connect()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    assert_eq!(server.status("/queue"), StatusCode::OK);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(5),
        "served after {waited:?}: it should wait for the idle ones' 1 s header timeout"
    );
}

#[test]
fn a_client_that_trickles_its_headers_is_cut_off_at_the_header_timeout() {
    let server = TestServer::start_with(with_timeouts(
        Duration::from_secs(1),
        Duration::from_secs(60),
    ));
    let mut s = server.connect();
    let started = Instant::now();
    let head = b"POST /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";
    // One byte every 100 ms: never idle, never done.
    for byte in head.iter().cycle().take(60) {
        if s.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let (_, _) = read_to_close(&mut s);
    let total = started.elapsed();
    assert!(
        total < Duration::from_secs(5),
        "the connection lived {total:?} with a 1 s header timeout"
    );
    server.assert_serving();
}

#[test]
fn a_body_that_stops_or_trickles_gets_408_naming_the_timeout() {
    let server = TestServer::start_with(|o| {
        o.limits = Limits {
            body_timeout: Duration::from_secs(1),
            // 1 s more per MiB: a trickle earns next to nothing.
            body_min_rate: 1 << 20,
            ..Limits::default()
        }
    });
    for (path, content_type) in [
        ("/prompt", "application/json"),
        ("/upload/image", "multipart/form-data; boundary=x"),
        ("/api/userdata/workflows%2Fa.json", "application/json"),
    ] {
        // Stops after 10 of 1,000 bytes.
        let mut s = server.connect();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n\
             Content-Length: 1000\r\n\r\n{{\"prompt\":"
        )
        .unwrap();
        let (sent, took) = read_to_close(&mut s);
        let (status, body) = parse_response(&sent);
        assert_eq!(status, 408, "{path}: {body}");
        assert_eq!(body["error"]["type"], "body_timeout", "{path}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--body-timeout"),
            "{body}"
        );
        assert!(took < Duration::from_secs(4), "{path}: {took:?}");
    }
    // Trickles: a byte every 100 ms, chunked, never ending.
    let mut s = server.connect();
    s.write_all(b"POST /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..50 {
                if s.write_all(b"1\r\n \r\n").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let (sent, _) = read_to_close(&mut s);
    let took = started.elapsed();
    assert_eq!(parse_response(&sent).0, 408);
    assert!(took < Duration::from_secs(3), "{took:?}");
    writer.join().unwrap();
    server.assert_serving();
}

// ------------------------------------------------------------------------- bodies

#[test]
fn oversized_bodies_get_413_naming_the_limit_on_every_route_that_reads_one() {
    let server = TestServer::start_with(|o| {
        o.limits = Limits {
            body_bytes: 1000,
            upload_bytes: 2000,
            ..Limits::default()
        }
    });
    let big = vec![b' '; 5000];
    for path in [
        "/prompt",
        "/api/prompt",
        "/queue",
        "/history",
        "/interrupt",
        "/free",
        "/api/settings",
        "/api/settings/Comfy.X",
        "/api/userdata/a.json",
        "/api/jobs/cancel",
    ] {
        let r = server
            .http
            .post(server.url(path))
            .body(big.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        let body: Json = r.json().unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("1000 bytes"),
            "{path}: {body}"
        );
    }
    // A chunked body (no Content-Length) is counted as it comes.
    let mut s = server.connect();
    s.write_all(b"POST /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    for _ in 0..3 {
        s.write_all(b"400\r\n").unwrap();
        s.write_all(&[b' '; 0x400]).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(parse_response(&buf[..n]).0, 413);

    let upload = reqwest::blocking::multipart::Form::new().part(
        "image",
        reqwest::blocking::multipart::Part::bytes(vec![0u8; 5000]).file_name("big.png"),
    );
    let r = server
        .http
        .post(server.url("/upload/image"))
        .multipart(upload)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Json = r.json().unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2000 bytes, this server's limit (--max-upload-size)"),
        "{body}"
    );
    // Headers beyond hyper's limit (100 of them) are refused before any route runs.
    let mut s = server.connect();
    let mut head = String::from("GET /queue HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for i in 0..200 {
        head.push_str(&format!("X-H{i}: v\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let (sent, _) = read_to_close(&mut s);
    assert_eq!(parse_response(&sent).0, 431);
    assert!(!list_files(server.dir.path().join("input").as_path()).contains(&"big.png".into()));
    server.assert_serving();
}

#[test]
fn malformed_bodies_get_400_naming_the_field() {
    let server = TestServer::start();
    let post = |path: &str, body: &str| {
        let r = server
            .http
            .post(server.url(path))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        let status = r.status();
        (status, r.json::<Json>().unwrap_or(Json::Null))
    };
    let cases: [(&str, &str, &str, &str); 14] = [
        (
            "/prompt",
            r#"{"prompt": "#,
            "invalid_json",
            "not valid JSON",
        ),
        ("/prompt", r#"[1, 2]"#, "invalid_json", "JSON object"),
        (
            "/prompt",
            "\u{0}\u{1}binary",
            "invalid_json",
            "not valid JSON",
        ),
        ("/prompt", r#"{"client_id": "x"}"#, "no_prompt", "No prompt"),
        (
            "/prompt",
            r#"{"prompt": "text"}"#,
            "invalid_prompt",
            "`prompt`",
        ),
        (
            "/prompt",
            r#"{"prompt": {}, "number": "abc"}"#,
            "invalid_number",
            "`number`",
        ),
        (
            "/prompt",
            r#"{"prompt": {}, "number": [1]}"#,
            "invalid_number",
            "`number`",
        ),
        (
            "/prompt",
            r#"{"prompt": {}, "prompt_id": "../x"}"#,
            "invalid_prompt_id",
            "prompt_id",
        ),
        (
            "/prompt",
            r#"{"prompt": {}, "extra_data": [1]}"#,
            "invalid_extra_data",
            "`extra_data`",
        ),
        (
            "/prompt",
            r#"{"prompt": {}, "client_id": {"a": 1}}"#,
            "invalid_client_id",
            "`client_id`",
        ),
        (
            "/prompt",
            r#"{"prompt": {}, "partial_execution_targets": "1"}"#,
            "invalid_partial_execution_targets",
            "`partial_execution_targets`",
        ),
        ("/queue", r#"{"delete": "abc"}"#, "invalid_json", "`delete`"),
        (
            "/history",
            r#"{"delete": [1, 2]}"#,
            "invalid_json",
            "`delete`",
        ),
        (
            "/api/settings",
            r#"{"a": "#,
            "invalid_json",
            "not valid JSON",
        ),
    ];
    for (path, body, kind, names) in cases {
        let (status, answer) = post(path, body);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body:?}: {answer}");
        let error = if answer["error"].is_object() {
            answer["error"].clone()
        } else {
            answer.clone()
        };
        assert_eq!(error["type"], kind, "{path} {body:?}: {answer}");
        let message = format!("{} {}", error["message"], error["details"]);
        assert!(message.contains(names), "{path} {body:?}: {answer}");
    }
    // A prompt node that is not an object of class_type and inputs.
    let (status, answer) = post("/prompt", r#"{"prompt": {"1": 5}}"#);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    // Multipart bodies that are not multipart, or lack the image.
    for (content_type, body) in [
        ("multipart/form-data", "no boundary"),
        ("multipart/form-data; boundary=b", "--b\r\ngarbage"),
        ("text/plain", "image=x"),
        (
            "multipart/form-data; boundary=b",
            "--b\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\ninput\r\n--b--\r\n",
        ),
    ] {
        let r = server
            .http
            .post(server.url("/upload/image"))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::BAD_REQUEST,
            "{content_type} {body:?}"
        );
        let answer: Json = r.json().unwrap();
        assert_eq!(answer["error"]["type"], "invalid_upload", "{answer}");
    }
    // A request line and headers hyper cannot parse.
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"GET /queue HTTP/9.9\r\n\r\n",
        b"GET /queue HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n",
        b"POST /prompt HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
    ] {
        let mut s = server.connect();
        s.write_all(garbage).unwrap();
        let (sent, _) = read_to_close(&mut s);
        if !sent.is_empty() {
            assert_eq!(parse_response(&sent).0, 400, "{garbage:?}");
        }
    }
    let queue: Json = server
        .http
        .get(server.url("/queue"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(queue["queue_pending"], json!([]), "nothing was queued");
    server.assert_serving();
}

// ------------------------------------------------------------------------- paths

/// Every file under `dir`, relative, sorted (symlinks listed, not followed).
fn list_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

/// A folder beside the server's folders, with a secret in it, and links to it from inside
/// every served folder.
struct Outside {
    dir: PathBuf,
    before: Vec<String>,
}

const SECRET: &str = "the secret that must never be served";

impl Outside {
    fn plant(server: &TestServer) -> Outside {
        let dir = server.dir.path().join("outside");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret.png"), SECRET).unwrap();
        std::fs::write(dir.join("secret.json"), SECRET).unwrap();
        #[cfg(unix)]
        for folder in ["output", "input", "temp", "user/default"] {
            let folder = server.dir.path().join(folder);
            std::fs::create_dir_all(&folder).unwrap();
            std::os::unix::fs::symlink(&dir, folder.join("linkdir")).unwrap();
            std::os::unix::fs::symlink(dir.join("secret.png"), folder.join("link.png")).unwrap();
            std::os::unix::fs::symlink(dir.join("secret.json"), folder.join("link.json")).unwrap();
        }
        Outside {
            before: list_files(&dir),
            dir,
        }
    }

    /// Nothing was written there and the secret is intact.
    fn check_untouched(&self) {
        assert_eq!(list_files(&self.dir), self.before, "files appeared outside");
        assert_eq!(
            std::fs::read_to_string(self.dir.join("secret.png")).unwrap(),
            SECRET
        );
        assert_eq!(
            std::fs::read_to_string(self.dir.join("secret.json")).unwrap(),
            SECRET
        );
    }
}

/// GET with the path sent exactly as written (reqwest would normalise `..` and `\`).
fn raw_get(server: &TestServer, target: &str) -> (u16, String) {
    let mut s = server.connect();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let (sent, _) = read_to_close(&mut s);
    let text = String::from_utf8_lossy(&sent).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn path_tricks_on_view_read_nothing_outside_the_folders() {
    let server = TestServer::start();
    let outside = Outside::plant(&server);
    std::fs::write(server.dir.path().join("output/ok.png"), "fine").unwrap();
    let cases: &[(&str, u16)] = &[
        ("/view?filename=ok.png", 200),
        ("/view?filename=../outside/secret.png", 400),
        ("/view?filename=..%2Foutside%2Fsecret.png", 400),
        ("/view?filename=%2e%2e%2foutside%2fsecret.png", 400),
        ("/view?filename=%252e%252e%252foutside%252fsecret.png", 404),
        ("/view?filename=..%5Coutside%5Csecret.png", 400),
        ("/view?filename=%5C..%5Csecret.png", 400),
        ("/view?filename=%2Fetc%2Fpasswd", 400),
        ("/view?filename=secret.png&subfolder=..%2Foutside", 403),
        ("/view?filename=secret.png&subfolder=%2e%2e/outside", 403),
        ("/view?filename=secret.png&subfolder=..%5Coutside", 403),
        (
            "/view?filename=secret.png&subfolder=%252e%252e%252foutside",
            404,
        ),
        ("/view?filename=passwd&subfolder=%2Fetc", 403),
        ("/view?filename=passwd&subfolder=%5Cetc", 403),
        ("/view?filename=ok.png%00.txt", 400),
        ("/view?filename=ok.png&subfolder=a%00b", 403),
        ("/view?filename=.", 400),
        ("/view?filename=secret.png&type=..", 400),
        ("/view?filename=secret.png&type=%2Foutside", 400),
        ("/view?filename=ok.png&type=output%00", 400),
        ("/view?filename=../outside/secret.png%20[output]", 400),
        ("/view/../outside/secret.png", 404),
        ("/view/..%2F..%2Foutside%2Fsecret.png", 404),
        ("/api/view?filename=secret.png&subfolder=..", 403),
        ("/%2e%2e/%2e%2e/outside/secret.png", 404),
    ];
    #[cfg(unix)]
    let links: &[(&str, u16)] = &[
        ("/view?filename=link.png", 403),
        ("/view?filename=link.png&type=input", 403),
        ("/view?filename=link.png&type=temp", 403),
        ("/view?filename=secret.png&subfolder=linkdir", 403),
        ("/view?filename=link.png%20[temp]", 403),
    ];
    #[cfg(not(unix))]
    let links: &[(&str, u16)] = &[];
    for (target, want) in cases.iter().chain(links) {
        let (status, text) = raw_get(&server, target);
        assert_eq!(status, *want, "{target}: {text}");
        assert!(!text.contains(SECRET), "{target} served the secret");
    }
    outside.check_untouched();
    server.assert_serving();
}

/// A multipart upload with exactly these bytes as the file name and fields.
fn raw_upload(server: &TestServer, file_name: &[u8], fields: &[(&str, &str)]) -> (u16, Json) {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--b\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"");
    body.extend_from_slice(file_name);
    body.extend_from_slice(b"\"\r\nContent-Type: image/png\r\n\r\nOVERWRITTEN\r\n--b--\r\n");
    let mut s = server.connect();
    write!(
        s,
        "POST /upload/image HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    let (sent, _) = read_to_close(&mut s);
    parse_response(&sent)
}

/// A file name, the other multipart fields, and the status expected.
type UploadCase = (&'static [u8], &'static [(&'static str, &'static str)], u16);

#[test]
fn path_tricks_on_uploads_write_nothing_outside_the_folders() {
    let server = TestServer::start();
    let outside = Outside::plant(&server);
    let cases: &[UploadCase] = &[
        (b"ok.png", &[], 200),
        (b"../outside/x.png", &[], 400),
        (b"..\\outside\\x.png", &[], 400),
        (b"a\\x.png", &[], 400),
        (b"a/x.png", &[], 400),
        (b"/tmp/x.png", &[], 400),
        (b"\\x.png", &[], 400),
        (b"x.png\0.txt", &[], 400),
        (b".", &[], 400),
        (b"..", &[], 400),
        (b"x.png", &[("subfolder", "../outside")], 400),
        (b"x.png", &[("subfolder", "..\\outside")], 400),
        (b"x.png", &[("subfolder", "/tmp")], 400),
        (b"x.png", &[("subfolder", "sub/../../outside")], 400),
        (b"x.png", &[("subfolder", "a\0b")], 400),
        (b"x.png", &[("type", "../outside")], 400),
        (b"x.png", &[("type", "output"), ("subfolder", "..")], 400),
        // Literal names (multipart fields are not URL-decoded): made inside the folder.
        (b"%2e%2e%2fx.png", &[], 200),
        (b"x.png", &[("subfolder", "%2e%2e%2foutside")], 200),
    ];
    #[cfg(unix)]
    let links: &[UploadCase] = &[
        (b"x.png", &[("subfolder", "linkdir")], 400),
        (b"x.png", &[("subfolder", "linkdir/deeper")], 400),
        (b"x.png", &[("type", "temp"), ("subfolder", "linkdir")], 400),
        // Onto a link to a file outside: the link is replaced or a new name taken, the
        // target never written.
        (b"link.png", &[], 200),
        (b"link.png", &[("overwrite", "true")], 200),
        (
            b"link.png",
            &[("type", "output"), ("overwrite", "true")],
            200,
        ),
    ];
    #[cfg(not(unix))]
    let links: &[UploadCase] = &[];
    for (name, fields, want) in cases.iter().chain(links) {
        let (status, answer) = raw_upload(&server, name, fields);
        assert_eq!(
            status,
            *want,
            "{:?} {fields:?}: {answer}",
            String::from_utf8_lossy(name)
        );
        if status == 400 {
            let kind = answer["error"]["type"].as_str().unwrap_or("");
            assert!(kind.starts_with("invalid_"), "{answer}");
        }
    }
    outside.check_untouched();
    server.assert_serving();
}

#[test]
fn path_tricks_on_userdata_touch_nothing_outside_the_user_folder() {
    let server = TestServer::start();
    let outside = Outside::plant(&server);
    let send = |method: &str, target: &str| -> (u16, String) {
        let mut s = server.connect();
        write!(
            s,
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Length: 11\r\n\r\nOVERWRITTEN"
        )
        .unwrap();
        let (sent, _) = read_to_close(&mut s);
        let text = String::from_utf8_lossy(&sent).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    };
    let cases: &[(&str, &str, u16)] = &[
        ("POST", "/api/userdata/workflows%2Fok.json", 200),
        ("GET", "/api/userdata/workflows%2Fok.json", 200),
        ("GET", "/api/userdata/..%2F..%2Foutside%2Fsecret.json", 403),
        (
            "GET",
            "/api/userdata/%2e%2e%2f%2e%2e%2foutside%2fsecret.json",
            403,
        ),
        ("GET", "/api/userdata/..%5C..%5Coutside%5Csecret.json", 403),
        ("GET", "/api/userdata/%2Fetc%2Fpasswd", 403),
        ("GET", "/api/userdata/%5Cetc%5Cpasswd", 403),
        ("GET", "/api/userdata/a%00b.json", 403),
        // Double-encoded: a literal name inside the folder, which does not exist.
        ("GET", "/api/userdata/%252e%252e%252fsecret.json", 404),
        ("POST", "/api/userdata/..%2F..%2Foutside%2Fnew.json", 403),
        ("POST", "/api/userdata/..%5C..%5Coutside%5Cnew.json", 403),
        ("POST", "/api/userdata/%2Ftmp%2Fnew.json", 403),
        ("POST", "/api/userdata/new%00.json", 403),
        (
            "DELETE",
            "/api/userdata/..%2F..%2Foutside%2Fsecret.json",
            403,
        ),
        (
            "POST",
            "/api/userdata/workflows%2Fok.json/move/..%2F..%2Foutside%2Fmoved.json",
            403,
        ),
        (
            "POST",
            "/api/userdata/..%2F..%2Foutside%2Fsecret.json/move/stolen.json",
            403,
        ),
        ("GET", "/api/userdata?dir=..%2F..%2Foutside", 403),
        ("GET", "/api/userdata?dir=%2Ftmp", 403),
        ("GET", "/api/v2/userdata?path=..%2F..%2Foutside", 400),
        ("GET", "/userdata/../../outside/secret.json", 404),
    ];
    #[cfg(unix)]
    let links: &[(&str, &str, u16)] = &[
        ("GET", "/api/userdata/link.json", 403),
        ("GET", "/api/userdata/linkdir%2Fsecret.json", 403),
        ("POST", "/api/userdata/linkdir%2Fnew.json", 403),
        ("POST", "/api/userdata/linkdir%2Fsecret.json", 403),
        ("DELETE", "/api/userdata/linkdir%2Fsecret.json", 403),
        ("POST", "/api/userdata/link.json/move/stolen.json", 403),
        (
            "POST",
            "/api/userdata/workflows%2Fok.json/move/linkdir%2Fmoved.json",
            403,
        ),
        ("GET", "/api/userdata?dir=linkdir", 403),
        ("GET", "/api/v2/userdata?path=linkdir", 404),
        // Writing onto the link replaces the link, never the file it points to.
        ("POST", "/api/userdata/link.json", 200),
    ];
    #[cfg(not(unix))]
    let links: &[(&str, &str, u16)] = &[];
    for (method, target, want) in cases.iter().chain(links) {
        let (status, text) = send(method, target);
        assert_eq!(status, *want, "{method} {target}: {text}");
        assert!(
            !text.contains(SECRET),
            "{method} {target} served the secret"
        );
    }
    outside.check_untouched();
    server.assert_serving();
}

// ------------------------------------------------------------------------- origin, host, token

#[test]
fn forged_origins_and_rebound_host_names_are_refused_and_same_origin_works() {
    let server = TestServer::start();
    let port = server.addr.port();
    let post = |host: Option<&str>, origin: Option<&str>| {
        let mut r = server
            .http
            .post(server.url("/api/settings/Comfy.X"))
            .body("1");
        if let Some(host) = host {
            r = r.header("Host", host);
        }
        if let Some(origin) = origin {
            r = r.header("Origin", origin);
        }
        let r = r.send().unwrap();
        let status = r.status();
        let kind = r.json::<Json>().ok().map(|j| j["error"]["type"].clone());
        (status, kind)
    };
    let own = format!("http://127.0.0.1:{port}");
    assert_eq!(post(None, None).0, StatusCode::OK);
    assert_eq!(post(None, Some(&own)).0, StatusCode::OK);
    assert_eq!(
        post(
            Some(&format!("localhost:{port}")),
            Some(&format!("http://localhost:{port}"))
        )
        .0,
        StatusCode::OK
    );
    for forged in [
        "https://evil.example".to_string(),
        "null".to_string(),
        format!("http://127.0.0.1:{}", port.wrapping_add(1)),
        format!("http://127.0.0.1:{port}.evil.example"),
        format!("http://evil@127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ] {
        let (status, kind) = post(None, Some(&forged));
        assert_eq!(status, StatusCode::FORBIDDEN, "{forged}");
        assert_eq!(kind, Some(json!("forbidden_origin")), "{forged}");
    }
    // DNS rebinding: evil.example now resolves to 127.0.0.1, and the page's requests carry
    // its own name as Host and Origin alike.
    let (status, kind) = post(
        Some(&format!("evil.example:{port}")),
        Some(&format!("http://evil.example:{port}")),
    );
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(kind, Some(json!("forbidden_host")));
    let (status, _) = post(Some(&format!("evil.example:{port}")), None);
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A WebSocket from another site is refused at the handshake.
    let mut s = server.connect();
    write!(
        s,
        "GET /ws?clientId=x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: https://evil.example\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 403"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let settings: Json = server
        .http
        .get(server.url("/api/settings"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        settings,
        json!({"Comfy.X": 1}),
        "only the allowed writes landed"
    );
}

#[test]
fn a_missing_or_wrong_token_is_401_on_every_route_and_the_right_one_works() {
    let server = TestServer::start_with(|o| o.token = Some("s3cret-token".into()));
    let port = server.addr.port();
    let with_auth = |auth: Option<&str>, path: &str| {
        let mut r = server.http.get(server.url(path));
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.send().unwrap().status()
    };
    for path in [
        "/prompt",
        "/queue",
        "/api/userdata?dir=workflows",
        "/api/jobs",
        "/ws",
    ] {
        for auth in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer "),
            Some("Bearer wrong"),
            Some("Bearer s3cret"),
            Some("Bearer s3cret-token-and-more"),
            Some("Bearer s3cret-token extra"),
            Some("Basic s3cret-token"),
            Some("s3cret-token"),
            Some("Bearer S3CRET-TOKEN"),
        ] {
            assert_eq!(
                with_auth(auth, path),
                StatusCode::UNAUTHORIZED,
                "{path} with {auth:?}"
            );
        }
    }
    assert_eq!(
        with_auth(Some("Bearer s3cret-token"), "/queue"),
        StatusCode::OK
    );
    assert_eq!(
        with_auth(Some("bearer  s3cret-token"), "/queue"),
        StatusCode::OK
    );
    // The query token opens only the WebSocket and /view.
    assert_eq!(
        with_auth(None, "/queue?token=s3cret-token"),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        with_auth(None, "/view?filename=none.png&token=wrong"),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        with_auth(None, "/view?filename=none.png&token=s3cret-token"),
        StatusCode::NOT_FOUND
    );
    // A forged sign-in cookie.
    let r = server
        .http
        .get(server.url("/queue"))
        .header("Cookie", format!("veetance_token_{port}=s3cret-token"))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // With a token, other Host names are allowed (a proxy), but still need the token.
    let r = server
        .http
        .get(server.url("/queue"))
        .header("Host", "gpu-box.example")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = server
        .http
        .get(server.url("/queue"))
        .header("Host", "gpu-box.example")
        .bearer_auth("s3cret-token")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Nothing was queued or written by the refused requests.
    assert!(list_files(&server.dir.path().join("user")).is_empty());
}

// ------------------------------------------------------------------------- WebSocket

/// A WebSocket opened by hand; the 101 read.
fn ws_handshake(server: &TestServer, client_id: &str) -> TcpStream {
    let mut s = server.connect();
    write!(
        s,
        "GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// One client frame: FIN and `opcode`, masked unless told not to, with its true length or a
/// claimed one.
fn frame(opcode: u8, payload: &[u8], masked: bool, claimed_len: Option<u64>) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let len = claimed_len.unwrap_or(payload.len() as u64);
    let mask_bit = if masked { 0x80 } else { 0 };
    if len < 126 {
        f.push(mask_bit | len as u8);
    } else if len <= u16::MAX as u64 {
        f.push(mask_bit | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(mask_bit | 127);
        f.extend_from_slice(&len.to_be_bytes());
    }
    let key = [0x12, 0x34, 0x56, 0x78];
    if masked {
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

#[test]
fn malformed_and_oversized_websocket_frames_close_that_socket_and_nothing_else() {
    let server = TestServer::start();
    let big = vec![b'x'; 2 << 20];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an unmasked client frame", frame(0x1, b"{}", false, None)),
        ("a reserved opcode", frame(0x3, b"x", true, None)),
        (
            "a text frame that is not UTF-8",
            frame(0x1, b"\xff\xfe\xfd", true, None),
        ),
        (
            "a continuation with nothing to continue",
            frame(0x0, b"x", true, None),
        ),
        (
            "a ping longer than 125 bytes",
            frame(0x9, &[0u8; 200], true, None),
        ),
        ("reserved bits set", {
            let mut f = frame(0x1, b"{}", true, None);
            f[0] |= 0x70;
            f
        }),
        (
            "a frame claiming 2^63 bytes",
            frame(0x2, b"", true, Some(1 << 63)),
        ),
        (
            "a 2 MiB message (the limit is 1 MiB)",
            frame(0x1, &big, true, None),
        ),
        ("a 2 MiB message in fragments", {
            let mut f = Vec::new();
            for (i, part) in big.chunks(64 << 10).enumerate() {
                let mut piece = frame(if i == 0 { 0x1 } else { 0x0 }, part, true, None);
                piece[0] &= 0x7f; // not FIN
                f.extend(piece);
            }
            f
        }),
        (
            "garbage",
            b"\x00\x00\x00\x00GET / HTTP/1.1\r\n\r\n".to_vec(),
        ),
    ];
    // One good client watches throughout: it stays connected and keeps getting messages.
    let mut watcher = ws_handshake(&server, "watcher");
    for (what, bytes) in cases {
        let mut s = ws_handshake(&server, "abuser");
        // The first message is `status`; then the bad bytes.
        let _ = s.write_all(&bytes);
        let (_, took) = read_to_close(&mut s);
        assert!(took < Duration::from_secs(5), "{what}: open for {took:?}");
        server.assert_serving();
    }
    // The watcher hears the queue change (a status message) after all that.
    let r = server
        .http
        .post(server.url("/prompt"))
        .json(&json!({"prompt": {"1": {"class_type": "EmptyLatent", "inputs": {}}}}))
        .send()
        .unwrap();
    assert!(r.status().is_client_error() || r.status().is_success());
    watcher
        .write_all(&frame(0x9, b"still there?", true, None))
        .unwrap();
    watcher
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = watcher.read(&mut buf).unwrap();
    assert!(n > 0, "the good client's socket still works");
}
