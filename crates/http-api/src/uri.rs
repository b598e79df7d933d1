//! The service's URL vocabulary that routing, handlers and errors share: the route prefix,
//! where a talk's status is read, and query parameters.
//!
//! It lives apart from [`router`](crate::router) so that the handlers and the error mapping
//! can name a status URL or read a query parameter without importing the router, which
//! imports them.

/// The prefix of the original service's routes.
pub const PREFIX: &str = "/api/d_id_optimized";

/// Where a talk's status is read: `/api/d_id_optimized/talk-status/{id}`.
pub fn status_url(id: &domain::TalkId) -> String {
    format!("{PREFIX}/talk-status/{id}")
}

/// Where a job is read (and cancelled): `/api/d_id_optimized/jobs/{id}`.
pub fn job_url(id: &str) -> String {
    format!("{PREFIX}/jobs/{id}")
}

/// The value of query parameter `name`, decoded as a form (`application/x-www-form-urlencoded`:
/// `%XX` escapes, `+` is a space; an invalid escape is kept as written). The first occurrence
/// wins.
pub fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        let uri: http::Uri = "/x?a=1&priority=h%69gh&b".parse().unwrap();
        assert_eq!(query_param(&uri, "priority").as_deref(), Some("high"));
        assert_eq!(query_param(&uri, "b").as_deref(), Some(""));
        assert_eq!(query_param(&uri, "c"), None);
        let uri: http::Uri = "/x?p=a+b%2".parse().unwrap();
        assert_eq!(query_param(&uri, "p").as_deref(), Some("a b%2"));
    }
}
