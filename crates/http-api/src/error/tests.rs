//! The table of every error: status, code, headers and words, pinned row by row.

use super::*;
use domain::{Priority, TalkId, UploadKind};
use http_body_util::BodyExt;
use ports::LimiterError;

fn body(resp: Response<Body>) -> Value {
    let bytes = futures_util::FutureExt::now_or_never(resp.into_body().collect())
        .unwrap()
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn check(err: ApiError, status: u16, code: &str) {
    let resp = err.into_response();
    assert_eq!(resp.status().as_u16(), status, "{code}");
    let v = body(resp);
    assert_eq!(v["error"]["code"], code);
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

fn talk_id() -> TalkId {
    TalkId::parse("tlk_abc").unwrap()
}

#[test]
fn every_upstream_error_has_its_status_and_code() {
    use VideoApiError as V;
    check(V::NotConfigured.into(), 503, "upstream_not_configured");
    check(
        V::Unauthorized { status: 401 }.into(),
        502,
        "upstream_auth_failed",
    );
    check(
        V::Forbidden {
            description: "no stitch".into(),
        }
        .into(),
        403,
        "upstream_permission_denied",
    );
    check(V::InsufficientCredits.into(), 402, "insufficient_credits");
    check(
        V::NotFound {
            description: "x".into(),
        }
        .into(),
        404,
        "not_found",
    );
    check(
        V::NotReady {
            description: "x".into(),
        }
        .into(),
        409,
        "not_ready",
    );
    let validation = |status| V::Validation {
        status,
        kind: "ValidationError".into(),
        description: "bad source".into(),
        details: None,
    };
    check(validation(400).into(), 400, "upstream_validation_error");
    check(validation(422).into(), 422, "upstream_validation_error");
    check(
        V::RateLimited { retry_after: None }.into(),
        429,
        "upstream_rate_limited",
    );
    check(V::Server { status: 503 }.into(), 502, "upstream_error");
    check(V::Timeout.into(), 504, "upstream_timeout");
    check(
        V::Connect {
            message: "refused".into(),
        }
        .into(),
        502,
        "upstream_unreachable",
    );
    check(
        V::Protocol {
            message: "x".into(),
        }
        .into(),
        502,
        "upstream_protocol_error",
    );
    check(
        V::TalkFailed {
            talk_id: talk_id(),
            kind: "FaceError".into(),
            description: "no face".into(),
        }
        .into(),
        502,
        "talk_failed",
    );
    check(
        V::TalkRejected {
            talk_id: talk_id(),
            description: "moderation".into(),
        }
        .into(),
        422,
        "talk_rejected",
    );
    check(
        V::TalkTimedOut {
            talk_id: talk_id(),
            waited: Duration::from_secs(1),
        }
        .into(),
        504,
        "talk_timeout",
    );
    check(
        V::Limiter(LimiterError::Timeout {
            priority: Priority::Low,
            waited: Duration::from_secs(1),
        })
        .into(),
        429,
        "queue_timeout",
    );
    check(
        V::Limiter(LimiterError::Unavailable {
            message: "down".into(),
        })
        .into(),
        503,
        "limiter_unavailable",
    );
}

#[test]
fn local_errors_have_their_status_and_code() {
    check(ApiError::MalformedJson("eof".into()), 400, "malformed_json");
    check(
        ApiError::InvalidBody("missing".into()),
        422,
        "invalid_request",
    );
    check(
        ApiError::CallbacksNotConfigured,
        422,
        "callbacks_not_configured",
    );
    check(
        "urgent".parse::<Priority>().unwrap_err().into(),
        400,
        "invalid_priority",
    );
    check(
        TalkId::parse("../x").unwrap_err().into(),
        400,
        "invalid_talk_id",
    );
    check(
        TalkRequestError::InvalidSourceUrl.into(),
        422,
        "invalid_source_url",
    );
    check(
        TalkRequestError::InvalidAudioUrl.into(),
        422,
        "invalid_audio_url",
    );
    check(
        UploadError::Empty {
            kind: UploadKind::Image,
        }
        .into(),
        400,
        "empty_file",
    );
    check(
        UploadError::TooLarge {
            kind: UploadKind::Audio,
            size: 9,
            max: 1,
        }
        .into(),
        413,
        "file_too_large",
    );
    check(
        UploadError::UnsupportedType {
            kind: UploadKind::Image,
            detected: None,
        }
        .into(),
        415,
        "unsupported_file_type",
    );
    check(ApiError::MissingFile, 400, "missing_file");
    check(
        ApiError::InvalidParameter {
            name: "max_age_seconds",
            message: "\"null\" is not a number".into(),
        },
        400,
        "invalid_parameter",
    );
    check(
        ApiError::PayloadTooLarge { limit: 1 },
        413,
        "payload_too_large",
    );
    let r = ApiError::PayloadTooLarge { limit: 1 }.into_response();
    assert_eq!(
        r.headers()[header::CONNECTION],
        "close",
        "the body was not read"
    );
    check(
        ApiError::UnsupportedMediaType {
            expected: "application/json",
        },
        415,
        "unsupported_media_type",
    );
    check(ApiError::RouteNotFound("/x".into()), 404, "route_not_found");
    check(
        ApiError::MethodNotAllowed { allow: &["GET"] },
        405,
        "method_not_allowed",
    );
    check(ApiError::Unauthorized, 401, "unauthorized");
    check(
        BodyTimeout::Idle(Duration::from_secs(1)).into(),
        408,
        "request_timeout",
    );
    check(ApiError::AdminDisabled, 403, "admin_disabled");
    check(
        ApiError::ShuttingDown {
            talk_id: None,
            job_id: None,
        },
        503,
        "shutting_down",
    );
    check(
        ApiError::UriTooLong {
            len: 9000,
            limit: 8192,
        },
        414,
        "uri_too_long",
    );
    check(
        ApiError::TooManyHeaders {
            count: 101,
            limit: 100,
        },
        431,
        "request_header_fields_too_large",
    );
    check(
        ApiError::HeadersTooLarge {
            size: 20_000,
            limit: 16_384,
        },
        431,
        "request_header_fields_too_large",
    );
    check(
        ApiError::Internal("boom at x.rs:1".into()),
        500,
        "internal_error",
    );
}

#[test]
fn headers_follow_the_status() {
    let r = ApiError::MethodNotAllowed {
        allow: &["GET", "HEAD"],
    }
    .into_response();
    assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
    let r = ApiError::from(VideoApiError::Limiter(LimiterError::Timeout {
        priority: Priority::Normal,
        waited: Duration::from_secs(60),
    }))
    .into_response();
    assert_eq!(r.headers()[header::RETRY_AFTER], "5");
    let r = ApiError::from(VideoApiError::RateLimited {
        retry_after: Some(Duration::from_millis(1500)),
    })
    .into_response();
    assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    let r = ApiError::Unauthorized.into_response();
    assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
    let r = ApiError::TooManyHeaders {
        count: 101,
        limit: 100,
    }
    .into_response();
    assert_eq!(r.headers()[header::CONNECTION], "close");
    let r = ApiError::ShuttingDown {
        talk_id: None,
        job_id: None,
    }
    .into_response();
    assert_eq!(r.headers()[header::RETRY_AFTER], "5");
    assert_eq!(r.headers()[header::CONNECTION], "close");
}

#[test]
fn the_less_common_rows_keep_their_status_code_and_headers() {
    use VideoApiError as V;
    let close = Some(("connection", "close"));
    let retry = Some(("retry-after", "5"));
    for (err, status, code, header) in [
        (
            ApiError::FileTooLarge {
                kind: UploadKind::Image,
                max: 1,
            },
            413,
            "file_too_large",
            close,
        ),
        (
            ApiError::MalformedMultipart("x".into()),
            400,
            "malformed_multipart",
            None,
        ),
        (
            ApiError::InvalidConfig("x".into()),
            422,
            "invalid_config",
            None,
        ),
        (
            TalkRequestError::TextLength { len: 1 }.into(),
            422,
            "invalid_config",
            None,
        ),
        (
            TalkRequestError::PadAudio { value: 99.0 }.into(),
            422,
            "invalid_config",
            None,
        ),
        (
            TalkRequestError::UserData.into(),
            422,
            "invalid_config",
            None,
        ),
        (
            TalkRequestError::Webhook.into(),
            422,
            "invalid_config",
            None,
        ),
        (
            V::Limiter(LimiterError::InvalidLimit { given: 0 }).into(),
            500,
            "internal_error",
            None,
        ),
        (
            V::Limiter(LimiterError::Unavailable {
                message: "down".into(),
            })
            .into(),
            503,
            "limiter_unavailable",
            retry,
        ),
        (
            BodyTimeout::Deadline(Duration::from_secs(1)).into(),
            408,
            "request_timeout",
            close,
        ),
        (
            ApiError::UriTooLong {
                len: 9000,
                limit: 8192,
            },
            414,
            "uri_too_long",
            close,
        ),
        (
            ApiError::HeadersTooLarge {
                size: 20_000,
                limit: 16_384,
            },
            431,
            "request_header_fields_too_large",
            close,
        ),
    ] {
        let resp = err.into_response();
        assert_eq!(resp.status().as_u16(), status, "{code}");
        let names: Vec<&str> = resp.headers().keys().map(|k| k.as_str()).collect();
        match header {
            Some((name, value)) => {
                assert_eq!(names, ["content-type", name], "{code}");
                assert_eq!(resp.headers()[name], value, "{code}");
            }
            None => assert_eq!(names, ["content-type"], "{code}"),
        }
        assert_eq!(body(resp)["error"]["code"], code);
    }
}

#[test]
fn a_generate_cut_off_at_shutdown_names_its_talk_and_where_to_follow_it() {
    let err = ApiError::ShuttingDown {
        talk_id: Some(talk_id()),
        job_id: None,
    };
    assert!(!err.log_level_is_error(), "logged at warn by the server");
    assert!(err.to_string().contains("tlk_abc"), "{err}");
    let v = body(err.into_response());
    assert_eq!(v["error"]["code"], "shutting_down");
    assert_eq!(v["error"]["talk_id"], "tlk_abc");
    assert_eq!(
        v["error"]["status_url"],
        "/api/d_id_optimized/talk-status/tlk_abc"
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("tlk_abc"));
    let v = body(
        ApiError::ShuttingDown {
            talk_id: None,
            job_id: None,
        }
        .into_response(),
    );
    assert_eq!(v["error"].get("talk_id"), None);
    assert_eq!(v["error"].get("status_url"), None);
}

#[test]
fn internal_details_and_talk_failures_are_reported_as_documented() {
    let v = body(ApiError::Internal("secret path /etc/x".into()).into_response());
    assert!(!v.to_string().contains("/etc/x"));
    let v = body(
        ApiError::from(VideoApiError::TalkFailed {
            talk_id: talk_id(),
            kind: "FaceError".into(),
            description: "no face found".into(),
        })
        .into_response(),
    );
    assert_eq!(v["error"]["talk_id"], "tlk_abc");
    assert_eq!(v["error"]["upstream_kind"], "FaceError");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no face found")
    );
}

mod client_text {
    use super::super::*;
    use http_body_util::BodyExt;

    fn message_and_headers(err: ApiError) -> (String, http::HeaderMap) {
        let resp = err.into_response();
        let headers = resp.headers().clone();
        let bytes = futures_util::FutureExt::now_or_never(resp.into_body().collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        (v["error"]["message"].as_str().unwrap().to_owned(), headers)
    }

    #[test]
    fn transport_failures_do_not_show_the_internal_url_or_the_error_chain() {
        let hostile = "error sending request for url (http://10.0.0.7:8443/talks): \
                       client error (Connect): tcp connect error: Connection refused (os error 111)";
        for err in [
            VideoApiError::Connect {
                message: hostile.into(),
            },
            VideoApiError::Protocol {
                message: hostile.into(),
            },
        ] {
            let (msg, _) = message_and_headers(err.into());
            for leak in ["10.0.0.7", "8443", "http://", "os error", "tcp", "Connect)"] {
                assert!(!msg.contains(leak), "{leak:?} in {msg:?}");
            }
            assert!(msg.contains("D-ID"), "{msg}");
        }
    }

    #[test]
    fn rate_limit_messages_have_no_debug_text_and_retry_after_is_capped() {
        let (msg, headers) = message_and_headers(
            VideoApiError::RateLimited {
                retry_after: Some(Duration::from_secs(99_999_999)),
            }
            .into(),
        );
        assert!(!msg.contains("Some("), "{msg}");
        assert!(!msg.contains("99999999"), "{msg}");
        assert_eq!(headers[header::RETRY_AFTER], "300");
        let (msg, headers) =
            message_and_headers(VideoApiError::RateLimited { retry_after: None }.into());
        assert!(!msg.contains("None"), "{msg}");
        assert_eq!(headers[header::RETRY_AFTER], "5");
    }

    #[test]
    fn a_timed_out_talk_message_has_no_debug_duration() {
        let (msg, _) = message_and_headers(
            VideoApiError::TalkTimedOut {
                talk_id: domain::TalkId::parse("tlk_abc").unwrap(),
                waited: Duration::from_millis(1234),
            }
            .into(),
        );
        assert!(!msg.contains("1.234s"), "{msg}");
        assert!(msg.contains("tlk_abc"), "{msg}");
    }

    #[test]
    fn upstream_not_configured_sends_no_retry_after() {
        let (_, headers) = message_and_headers(VideoApiError::NotConfigured.into());
        assert!(!headers.contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn the_not_found_message_says_not_found_once() {
        for description in ["not found", "Not Found", "talk not found"] {
            let (msg, _) = message_and_headers(
                VideoApiError::NotFound {
                    description: description.into(),
                }
                .into(),
            );
            assert_eq!(
                msg.to_ascii_lowercase().matches("not found").count(),
                1,
                "{msg}"
            );
        }
    }
}
