//! How `http.request` reads a list over its pages (read in `listing`),
//! in the lookup-many modes of the
//! standardized actions: every page's items together (`fetchAll`, which
//! fails with "too many results" at `maxResultSize`), each item in a run of
//! its own (`emitIndividually`), or one page with what finds the next
//! (`fetchPage`). The next page is found by the `Link` header's
//! `rel="next"` (RFC 8288), by a cursor in each page's body sent back as a
//! query parameter, or by page numbers until a page has no items.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
#[cfg(test)]
use serde_json::json;
use serde_json_path::JsonPath;

/// `pages` of `http.request`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pages {
    /// Where a page's items are in its body, a JSONPath (default `$`: the
    /// body is the list).
    #[serde(default = "root")]
    pub items: String,
    /// How the next page is found.
    pub next: Next,
    /// `fetchAll` (default), `emitIndividually` or `fetchPage`.
    #[serde(default)]
    pub mode: Mode,
    /// `fetchAll` and `emitIndividually` fail with "too many results" when
    /// this many items or more are found (default 1000).
    #[serde(default = "default_max")]
    pub max_result_size: u32,
    /// `fetchPage`: the page to fetch, as the `next` of the page before gave
    /// it (a URL, a cursor or a page number); none: the first.
    pub from: Option<Value>,
}

fn root() -> String {
    "$".into()
}

fn default_max() -> u32 {
    1000
}

/// How a list is read.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// Every item of every page, as `{results: [...]}`.
    #[default]
    FetchAll,
    /// Every item, each in a run of its own.
    EmitIndividually,
    /// One page, as `{results: [...], next}` (`next` null on the last).
    FetchPage,
}

/// How the next page is found.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Next {
    /// `link`: the `Link` header's `rel="next"`.
    Link(LinkWord),
    /// `{cursor: JSONPath, param: name}`: the value at `cursor` in a page's
    /// body is sent as query parameter `param` for the next; none (null or
    /// empty) on the last page.
    Cursor(CursorNext),
    /// `{page: name, start: 1}`: page numbers in query parameter `page`,
    /// from `start`, until a page has no items.
    Page(PageNext),
}

/// The word `link`.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LinkWord {
    /// `link`.
    Link,
}

/// A cursor in the body.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CursorNext {
    /// Where the cursor is in a page's body, a JSONPath.
    pub cursor: String,
    /// The query parameter that takes it.
    pub param: String,
}

/// Page numbers.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PageNext {
    /// The query parameter of the page number.
    pub page: String,
    /// The first page's number (default 1).
    pub start: Option<u64>,
}

/// The items of a page: the list at the path, or the values it selects.
pub(crate) fn items_of(at: &JsonPath, body: &Value) -> Option<Vec<Value>> {
    // A path that can select many (a wildcard, a descent, a filter, a
    // slice) selects the items; one that names a place finds the list.
    let text = at.to_string();
    let selects = ['*', '?', ':'].iter().any(|c| text.contains(*c)) || text.contains("..");
    let found = at.query(body).all();
    match found.as_slice() {
        many if selects => Some(many.iter().map(|v| (*v).clone()).collect()),
        [Value::Array(list)] => Some(list.clone()),
        [Value::Null] => Some(Vec::new()),
        _ => None,
    }
}

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Set query parameter `name` to `value`, replacing it if it is there.
pub(crate) fn set_param(url: &mut url::Url, name: &str, value: &str) {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut pairs = url.query_pairs_mut();
    pairs.clear();
    for (k, v) in &kept {
        pairs.append_pair(k, v);
    }
    pairs.append_pair(name, value);
}

/// The target of the `Link` header's `rel="next"`, if any.
pub(crate) fn next_link(headers: &reqwest::header::HeaderMap) -> Option<String> {
    for value in headers.get_all(reqwest::header::LINK) {
        let text = value.to_str().ok()?;
        for part in text.split(',') {
            let mut pieces = part.split(';');
            let target = pieces.next()?.trim();
            let is_next = pieces.any(|param| {
                let param = param.trim();
                param.strip_prefix("rel=").is_some_and(|rel| {
                    rel.trim_matches('"')
                        .split_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
                })
            });
            if is_next && target.starts_with('<') && target.ends_with('>') {
                return Some(target[1..target.len() - 1].to_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_link_is_found_among_others() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            "link",
            "<https://a.example/x?page=1>; rel=\"prev\", <https://a.example/x?page=3>; rel=\"next last\""
                .parse()
                .unwrap(),
        );
        assert_eq!(next_link(&h).as_deref(), Some("https://a.example/x?page=3"));
        h.insert(
            "link",
            "<https://a.example/x?page=1>; rel=prev".parse().unwrap(),
        );
        assert_eq!(next_link(&h), None);
    }

    #[test]
    fn items_are_a_list_or_the_values_selected() {
        let body = json!({"data": [1, 2], "meta": {"n": 2}, "rows": [{"id": 1}, {"id": 2}]});
        let p = |t: &str| JsonPath::parse(t).unwrap();
        assert_eq!(
            items_of(&p("$.data"), &body),
            Some(vec![json!(1), json!(2)])
        );
        assert_eq!(
            items_of(&p("$.rows[*].id"), &body),
            Some(vec![json!(1), json!(2)])
        );
        assert_eq!(items_of(&p("$.meta"), &body), None);
        assert_eq!(items_of(&p("$.nothing"), &body), None);
        assert_eq!(items_of(&p("$"), &json!([])), Some(vec![]));
        assert_eq!(
            items_of(&p("$.rows[*].id"), &json!({"rows": []})),
            Some(vec![])
        );
        assert_eq!(items_of(&p("$.data"), &json!({"data": 3})), None);
    }

    #[test]
    fn a_parameter_is_replaced() {
        let mut u = url::Url::parse("http://a.example/x?page=1&q=a%20b").unwrap();
        set_param(&mut u, "page", "2");
        assert_eq!(u.query(), Some("q=a+b&page=2"));
    }
}
