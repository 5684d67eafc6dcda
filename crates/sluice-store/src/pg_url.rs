//! What Sluice reads in a PostgreSQL store's URL itself: its own option
//! `pool_size` (taken out before the URL reaches the driver), and the URL
//! as it may be shown (without its password).

/// The connections a process opens to its store when its URL does not say
/// (`?pool_size=N`).
pub(crate) const POOL_SIZE: u32 = 16;

/// The store's URL without Sluice's own option `pool_size` (the most
/// connections this process opens to the store), and that number.
pub(crate) fn pool_size(url: &str) -> Result<(String, u32), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), POOL_SIZE));
    };
    let mut size = POOL_SIZE;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("pool_size=") {
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (2..=1000).contains(&n) => size = n,
                _ => {
                    return Err(format!(
                        "`pool_size` must be a number of connections from 2 to 1000 (got `{v}`)"
                    ));
                }
            },
            None => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, size))
}

/// A database URL with its password shown as `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user part ends at the last `@` before the query, so that a
    // password holding an `@` is hidden whole.
    let before_query = rest.split('?').next().unwrap_or_default();
    let Some(at) = before_query.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = rest.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_size_is_taken_out_of_the_url() {
        let u = "postgres://ada@db:5432/runs";
        assert_eq!(pool_size(u), Ok((u.to_owned(), POOL_SIZE)));
        assert_eq!(
            pool_size("postgres://ada@db/runs?pool_size=4"),
            Ok(("postgres://ada@db/runs".to_owned(), 4))
        );
        assert_eq!(
            pool_size("postgres://db/runs?sslmode=require&pool_size=40&application_name=s"),
            Ok((
                "postgres://db/runs?sslmode=require&application_name=s".to_owned(),
                40
            ))
        );
        for bad in ["0", "1", "x", "", "100000"] {
            let e = pool_size(&format!("postgres://db/runs?pool_size={bad}")).unwrap_err();
            assert!(e.contains("pool_size"), "{e}");
        }
    }

    #[test]
    fn a_password_is_not_shown() {
        assert_eq!(
            redact_url("postgres://ada:s3cret@db:5432/runs"),
            "postgres://ada:***@db:5432/runs"
        );
        assert_eq!(redact_url("postgres://db/runs"), "postgres://db/runs");
        assert_eq!(
            redact_url("postgres://ada:p@ss@db/runs?application_name=a@b"),
            "postgres://ada:***@db/runs?application_name=a@b"
        );
    }
}
