//! A list read over its pages as its `pages` option says (see
//! [`crate::pages`]), each page a request of its own.

use crate::call::{Call, HttpRequestOptions, answer, target};
use crate::pages::{Mode, Next, Pages, items_of, next_link, set_param, text};
use serde_json::{Map, Value, json};
use serde_json_path::JsonPath;
use sluice_action::{ActionError, Outcome};

/// The most pages one step reads.
const MAX_PAGES: usize = 10_000;

fn path(text: &str, what: &str) -> Result<JsonPath, ActionError> {
    sluice_expr::path::json_path(text).map_err(|e| {
        ActionError::flow(format!(
            "`pages.{what}` `{text}` is not a JSONPath: {}",
            e.message
        ))
    })
}

/// Read the list whose first page is at `first`.
pub(crate) async fn read(
    call: &Call<'_>,
    p: &Pages,
    first: url::Url,
    o: &HttpRequestOptions,
) -> Result<Outcome, ActionError> {
    let items_at = path(&p.items, "items")?;
    let cursor_at = match &p.next {
        Next::Cursor(c) => Some(path(&c.cursor, "next.cursor")?),
        _ => None,
    };
    let mut url = first;
    let mut number = match &p.next {
        Next::Page(n) => n.start.unwrap_or(1),
        _ => 0,
    };
    match (&p.from, &p.next) {
        (None, Next::Page(n)) => set_param(&mut url, &n.page, &number.to_string()),
        (None, _) => {}
        (Some(from), Next::Link(_)) => {
            let to = from.as_str().ok_or_else(|| {
                ActionError::data(format!("`pages.from` is a page's URL, found {from}"))
            })?;
            url = target(call.conn(), to, &Map::new())?;
        }
        (Some(from), Next::Cursor(c)) => set_param(&mut url, &c.param, &text(from)),
        (Some(from), Next::Page(n)) => {
            number = from.as_u64().ok_or_else(|| {
                ActionError::data(format!("`pages.from` is a page number, found {from}"))
            })?;
            set_param(&mut url, &n.page, &number.to_string());
        }
    }
    let mut all = Vec::new();
    let mut read = 0;
    let mut seen = std::collections::HashSet::new();
    loop {
        let sent = call.send(&url).await?;
        let link = next_link(&sent.headers);
        let page = answer(call.method(), &url, sent, o)?;
        let body = page.get("body").unwrap_or(&Value::Null);
        let items = items_of(&items_at, body).ok_or_else(|| {
            ActionError::external(format!(
                "page {} of {} has no list at `{}`",
                read + 1,
                crate::send::shown(&url),
                p.items
            ))
        })?;
        let next: Option<(url::Url, Value)> = match &p.next {
            Next::Link(_) => match link {
                Some(l) => {
                    let to = url.join(&l).map_err(|e| {
                        ActionError::external(format!("the next page's link `{l}`: {e}"))
                    })?;
                    let shown = Value::String(to.to_string());
                    Some((target(call.conn(), to.as_str(), &Map::new())?, shown))
                }
                None => None,
            },
            Next::Cursor(c) => {
                let at = cursor_at
                    .as_ref()
                    .and_then(|a| a.query(body).first().cloned());
                match at {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) if s.is_empty() => None,
                    Some(v) => {
                        let mut u = url.clone();
                        set_param(&mut u, &c.param, &text(&v));
                        Some((u, v.clone()))
                    }
                }
            }
            Next::Page(n) => (!items.is_empty()).then(|| {
                let mut u = url.clone();
                set_param(&mut u, &n.page, &(number + 1).to_string());
                (u, json!(number + 1))
            }),
        };
        if p.mode == Mode::FetchPage {
            let next = next.map_or(Value::Null, |(_, v)| v);
            return Ok(Outcome::value(json!({"results": items, "next": next})));
        }
        all.extend(items);
        if all.len() >= p.max_result_size as usize {
            return Err(ActionError::data(format!(
                "too many results: {} or more objects were found (maxResultSize is {})",
                p.max_result_size, p.max_result_size
            )));
        }
        read += 1;
        let Some((to, _)) = next else { break };
        seen.insert(url.to_string());
        if seen.contains(to.as_str()) {
            return Err(ActionError::external(format!(
                "the page after {} is one read before: the pages go round in a circle",
                crate::send::shown(&url)
            )));
        }
        if read >= MAX_PAGES {
            return Err(ActionError::external(format!(
                "more than {MAX_PAGES} pages"
            )));
        }
        url = to;
        number += 1;
    }
    Ok(match p.mode {
        Mode::EmitIndividually => Outcome::each(all, None),
        _ => Outcome::value(json!({"results": all})),
    })
}
