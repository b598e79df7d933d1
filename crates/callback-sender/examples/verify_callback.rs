//! The receiving side of a talkgate callback: check its signature with the
//! `standardwebhooks` crate before reading the body. The README shows `verify_callback`
//! as it is here (a test compares the two). Run it:
//! `cargo run -p callback-sender --example verify_callback`.

use standardwebhooks::Webhook;

/// The event of a callback whose `webhook-signature` (any of its `v1,…`, so both secrets of
/// a rotation work) matches its raw body under `secret`, and whose `webhook-timestamp` is
/// within 5 minutes of now. Dedupe on `webhook-id`: a retry carries the same one.
fn verify_callback(
    secret: &str,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    Webhook::new(secret)?.verify(body, headers)?;
    Ok(serde_json::from_slice(body)?)
}

#[allow(clippy::print_stdout)] // The example's own output.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // What talkgate sends: signed with CALLBACK_SECRET (and CALLBACK_SECRET_PREVIOUS).
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let signer = callback_sender::Signer::new(&secret.to_owned().into(), None)?;
    let body = br#"{"type":"talk.done","timestamp":"2026-12-07T12:00:00.000Z","data":{"job_id":"job_0000000000000000000001","status":"done"}}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let mut headers = http::HeaderMap::new();
    headers.insert("webhook-id", "msg_0000000000000000000001".parse()?);
    headers.insert("webhook-timestamp", now.to_string().parse()?);
    let signature = signer.signature("msg_0000000000000000000001", now, body);
    headers.insert("webhook-signature", signature.unwrap_or_default().parse()?);

    let event = verify_callback(secret, &headers, body)?;
    println!("verified {} for {}", event["type"], event["data"]["job_id"]);
    let mut forged = body.to_vec();
    forged[10] ^= 1;
    assert!(
        verify_callback(secret, &headers, &forged).is_err(),
        "a changed body fails"
    );
    Ok(())
}
