//! Keeping passwords out of every message the sink gives: the [`Redactor`].

use super::conninfo::ConnInfo;

/// Removes known secrets from text before it reaches a user: error messages, stats, logs.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Longest first, so that a secret containing another is masked whole.
    secrets: Vec<String>,
}

impl Redactor {
    /// Text shown in place of a secret.
    pub const MASK: &'static str = "********";

    /// A redactor that knows the passwords of a connection string: every `password` setting (a URL's
    /// user-info or query parameter, or a keyword/value pair, even one left unterminated), both as written
    /// (still percent-encoded or escaped) and as decoded.
    pub fn for_conn(conn: &ConnInfo) -> Redactor {
        let mut redactor = Redactor::default();
        for item in conn.items.iter().filter(|item| item.is("password")) {
            redactor.add(item.raw_value);
            if let Ok(value) = item.value() {
                redactor.add(&value);
            }
        }
        redactor
    }

    /// Adds `secret` (nothing if it is empty).
    pub fn add(&mut self, secret: &str) {
        if !secret.is_empty() && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_owned());
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// `text` with every known secret, and any `user:password@` part of a URL, masked.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), Self::MASK);
            }
        }
        mask_url_passwords(&out)
    }
}

/// Masks the password of every `scheme://user:password@` in `text`.
fn mask_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..=colon]);
                out.push_str(Redactor::MASK);
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_any_text_lose_their_password() {
        assert_eq!(
            mask_url_passwords("see postgresql://u:p@h:1/d and http://x/y"),
            "see postgresql://u:********@h:1/d and http://x/y"
        );
    }

    #[test]
    fn every_password_setting_is_a_secret_as_written_and_as_decoded() {
        let redact =
            |conn: &str, text: &str| Redactor::for_conn(&ConnInfo::parse(conn)).redact(text);
        assert_eq!(
            redact("postgres://u:a%20b@h?password=c%2Bd", "a%20b a b c%2Bd c+d"),
            "******** ******** ******** ********"
        );
        assert_eq!(
            redact(
                r"host=h password='x\'y' password=p\ q",
                r"x\'y x'y p\ q p q"
            ),
            "******** ******** ******** ********"
        );
        // Left unterminated, a quoted password is still known.
        assert_eq!(redact("host=h password='open", "open"), "********");
        // Longest first: a secret inside another is masked with it.
        assert_eq!(
            redact("host=h password=ab password=abc", "abc ab"),
            "******** ********"
        );
    }
}
