//! Misbehaving peers for fault injection: a loopback HTTP/1.1 server whose answer can be
//! switched while it runs (a status and body, a body without length, silence, an immediate
//! close), counting the connections it accepts; and tokens signed with the throw-away key
//! in `tests/keys/` for an issuer whose JWKS such a server serves.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::support::repo;

/// What the fake does with each connection.
#[derive(Clone, Debug)]
pub enum Answer {
    /// Status, content type and body, with `content-length`.
    Reply(u16, &'static str, Vec<u8>),
    /// 200 and a body without `content-length`, ended by closing the connection.
    Unframed(Vec<u8>),
    /// Read the request, then say nothing for this long and close.
    Silence(Duration),
    /// Close the connection as soon as it is accepted, before reading anything.
    Close,
}

impl Answer {
    pub fn json(v: &Value) -> Answer {
        Answer::Reply(200, "application/json", v.to_string().into_bytes())
    }
}

pub struct Fake {
    pub port: u16,
    answer: Arc<Mutex<Answer>>,
    accepted: Arc<AtomicUsize>,
}

fn read_head(stream: &TcpStream) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if line == "\r\n" || line == "\n" {
            return;
        }
        line.clear();
    }
}

fn serve(mut stream: TcpStream, answer: Answer) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    match answer {
        Answer::Close => {}
        Answer::Silence(d) => {
            read_head(&stream);
            thread::sleep(d);
        }
        Answer::Reply(status, ct, body) => {
            read_head(&stream);
            let head = format!(
                "HTTP/1.1 {status} Fake\r\ncontent-type: {ct}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
        Answer::Unframed(body) => {
            read_head(&stream);
            let head =
                "HTTP/1.1 200 Fake\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    }
}

impl Fake {
    pub fn start(answer: Answer) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let answer = Arc::new(Mutex::new(answer));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (a, n) = (answer.clone(), accepted.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                n.fetch_add(1, Ordering::SeqCst);
                let current = a.lock().unwrap().clone();
                thread::spawn(move || serve(stream, current));
            }
        });
        Fake {
            port,
            answer,
            accepted,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn test_key() -> jsonwebtoken::EncodingKey {
    let pem = std::fs::read(repo().join("tests/keys/rs256.pem")).unwrap();
    jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap()
}

/// A JWKS holding the public half of the test RSA key under each of `kids`.
pub fn jwks(kids: &[&str]) -> Value {
    let key = test_key();
    let keys: Vec<Value> = kids
        .iter()
        .map(|kid| {
            let mut jwk =
                jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::RS256)
                    .unwrap();
            jwk.common.key_id = Some(kid.to_string());
            serde_json::to_value(jwk).unwrap()
        })
        .collect();
    json!({ "keys": keys })
}

/// An RS256 token from the test key: `kid`, issuer `iss`, subject `sub`, agent-1, valid 5 min.
pub fn token(kid: &str, iss: &str, sub: &str) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some(kid.to_string());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": iss, "sub": sub, "aud": "https://api.portcullis.test", "azp": "agent-1",
        "scope": "invoices:read", "roles": ["viewer"], "iat": now, "exp": now + 300,
    });
    jsonwebtoken::encode(&h, &claims, &test_key()).unwrap()
}
