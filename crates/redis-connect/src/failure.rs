//! [`BackendError`]: a Redis call that failed, as a [`DegradedReason`] and a message safe to
//! show, and [`classify`], which tells which kind of failure a fred error is (a refused
//! connection, a wrong password, a failed handshake, a Cluster node behind a plain URL, …).

use ports::DegradedReason;

/// A Redis call that failed or timed out; the message is safe to show (no URL, no password).
#[derive(Debug, Clone)]
pub struct BackendError {
    pub(crate) message: String,
    /// What kind of failure it was, for stats and logs.
    pub reason: DegradedReason,
}

impl BackendError {
    /// A failure of a known kind.
    pub fn new(reason: DegradedReason, message: String) -> Self {
        BackendError { message, reason }
    }

    /// A fred error, classified; a cluster redirection also says what to do about it.
    pub fn fred(context: &str, e: &fred::error::Error) -> Self {
        let reason = classify(e);
        let hint = if reason == DegradedReason::Cluster {
            CLUSTER_HINT
        } else {
            ""
        };
        Self::new(reason, format!("{context}: {e}{hint}"))
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The `rustls::Error` variants a failed handshake shows up as. tokio-rustls hands them to
/// fred inside an `io::Error` of kind `InvalidData`, so fred reports an `IO` error whose
/// details are that error's debug text, e.g. `Custom { kind: InvalidData, error:
/// InvalidCertificate(UnknownIssuer) }` (a server certificate from another CA) or
/// `AlertReceived(CertificateRequired)` (mutual TLS without a client certificate).
const RUSTLS_ERRORS: &[&str] = &[
    "InvalidCertificate",
    "AlertReceived",
    "NoCertificatesPresented",
    "UnsupportedNameType",
    "PeerIncompatible",
    "PeerMisbehaved",
    "InappropriateMessage",
    "InappropriateHandshakeMessage",
    "InvalidMessage",
    "DecryptError",
    "EncryptError",
    "HandshakeNotComplete",
    "InconsistentKeys",
];

/// What the log line adds to a [`DegradedReason::Cluster`] failure: the fix.
const CLUSTER_HINT: &str = "; the server is a Redis Cluster node (it answered with a cluster \
    redirection or CROSSSLOT): a plain redis:// URL reaches only the node it names, so use a \
    redis-cluster:// URL (rediss-cluster:// for TLS), e.g. \
    redis-cluster://host:port?node=host2:port2";

/// The first words of the errors a Redis Cluster node answers a command with when the URL
/// treats it as a single server: `MOVED <slot> <host:port>` and `ASK <slot> <host:port>` (the
/// slot of the keys lives on another node), `CROSSSLOT Keys in request don't hash to the same
/// slot`. fred reports the first two as `ErrorKind::Cluster` and the last as `Unknown`, the
/// server's text as the details. `CLUSTERDOWN` (also `ErrorKind::Cluster`) is not one of them:
/// a cluster client sees it during a failover, and it says nothing about the URL.
const CLUSTER_ANSWERS: &[&str] = &["MOVED", "ASK", "CROSSSLOT"];

/// Which kind of failure a fred error is. fred reports `WRONGPASS`/`NOAUTH` as `Auth`, its
/// own TLS errors (a server name that is no DNS name) as `Tls`, a failed handshake as in
/// `RUSTLS_ERRORS`, a socket error as `IO` with the `std::io::Error`'s debug text
/// (`kind: ConnectionRefused`), and a cluster node's redirection as in `CLUSTER_ANSWERS`.
pub fn classify(e: &fred::error::Error) -> DegradedReason {
    use fred::error::ErrorKind;
    let details = e.details();
    let lower = details.to_ascii_lowercase();
    let rustls_failure = || {
        details.contains("kind: InvalidData") && RUSTLS_ERRORS.iter().any(|v| details.contains(v))
    };
    let first_word = details.split_whitespace().next().unwrap_or("");
    if CLUSTER_ANSWERS.contains(&first_word) {
        DegradedReason::Cluster
    } else if *e.kind() == ErrorKind::Auth
        || details.contains("WRONGPASS")
        || details.contains("NOAUTH")
        || lower.contains("invalid password")
    {
        DegradedReason::Auth
    } else if *e.kind() == ErrorKind::Tls || rustls_failure() {
        DegradedReason::Tls
    } else if *e.kind() == ErrorKind::Timeout || details.contains("TimedOut") {
        DegradedReason::Timeout
    } else if details.contains("ConnectionRefused") || lower.contains("connection refused") {
        DegradedReason::Refused
    } else {
        DegradedReason::Other
    }
}

#[cfg(test)]
mod tests {
    use fred::error::{Error, ErrorKind};

    use super::*;

    #[test]
    fn failures_are_classified_by_what_went_wrong() {
        #[track_caller]
        fn check(kind: ErrorKind, details: &str, expected: DegradedReason) {
            assert_eq!(
                classify(&Error::new(kind, details.to_owned())),
                expected,
                "{details}"
            );
        }
        // The details as fred reports them (seen against a real redis-server).
        check(
            ErrorKind::IO,
            "Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) }",
            DegradedReason::Tls,
        );
        check(
            ErrorKind::IO,
            "Custom { kind: InvalidData, error: InvalidCertificate(NotValidForNameContext { \
             expected: DnsName(\"redis.example\"), presented: [] }) }",
            DegradedReason::Tls,
        );
        check(
            ErrorKind::IO,
            "Custom { kind: InvalidData, error: AlertReceived(CertificateRequired) }",
            DegradedReason::Tls,
        );
        check(ErrorKind::Tls, "InvalidDnsNameError", DegradedReason::Tls);
        check(
            ErrorKind::IO,
            "Os { code: 111, kind: ConnectionRefused, message: \"Connection refused\" }",
            DegradedReason::Refused,
        );
        check(
            ErrorKind::Auth,
            "WRONGPASS invalid username-password pair",
            DegradedReason::Auth,
        );
        check(
            ErrorKind::Timeout,
            "Request timed out.",
            DegradedReason::Timeout,
        );
        check(
            ErrorKind::IO,
            "Os { code: 104, kind: ConnectionReset, message: \"Connection reset by peer\" }",
            DegradedReason::Other,
        );
        // A word in a message is not a handshake failure.
        check(
            ErrorKind::Unknown,
            "ERR certificate store full",
            DegradedReason::Other,
        );
        // A cluster node behind a plain redis:// URL (seen against a real 3-master cluster,
        // see the integration test `cluster::a_plain_url_at_a_node_without_the_slot_...`).
        check(
            ErrorKind::Cluster,
            "MOVED 9206 127.0.0.1:40221",
            DegradedReason::Cluster,
        );
        check(
            ErrorKind::Cluster,
            "ASK 9206 127.0.0.1:40221",
            DegradedReason::Cluster,
        );
        check(
            ErrorKind::Unknown,
            "CROSSSLOT Keys in request don't hash to the same slot",
            DegradedReason::Cluster,
        );
        // A cluster mid-failover is not a wrong URL.
        check(
            ErrorKind::Cluster,
            "CLUSTERDOWN The cluster is down",
            DegradedReason::Other,
        );
        check(
            ErrorKind::Unknown,
            "ERR wrong number of arguments for 'MOVED'",
            DegradedReason::Other,
        );
    }

    #[test]
    fn a_cluster_redirection_says_to_use_a_cluster_url() {
        let moved = Error::new(ErrorKind::Cluster, "MOVED 9206 127.0.0.1:40221");
        let e = BackendError::fred("redis", &moved);
        assert_eq!(e.reason, DegradedReason::Cluster);
        let message = e.to_string();
        for needle in ["MOVED 9206 127.0.0.1:40221", "use a redis-cluster:// URL"] {
            assert!(message.contains(needle), "{needle:?} not in {message:?}");
        }
        let refused = Error::new(ErrorKind::IO, "kind: ConnectionRefused");
        assert!(
            !BackendError::fred("redis", &refused)
                .to_string()
                .contains("cluster")
        );
    }
}
