//! The proxy's local credentials, shared by its IMAP and SMTP sides (DESIGN.md §7.5).

use letterme_smtp::session::CheckLogin;

/// The local credentials. `Debug` never shows the password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Constant-time on the password.
    pub fn check(&self, username: &[u8], password: &[u8]) -> bool {
        let user_ok = self.username.as_bytes().eq_ignore_ascii_case(username);
        let p = self.password.as_bytes();
        let mut diff = p.len() ^ password.len();
        for (i, b) in p.iter().enumerate() {
            diff |= usize::from(b ^ password.get(i).copied().unwrap_or(0));
        }
        user_ok && diff == 0
    }
}

/// The submission port's AUTH checks the same login as IMAP's LOGIN.
impl CheckLogin for Credentials {
    fn check(&self, username: &[u8], password: &[u8]) -> bool {
        Credentials::check(self, username, password)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_compare_whole_passwords() {
        let c = Credentials {
            username: "bob@example.com".into(),
            password: "s3cret".into(),
        };
        assert!(c.check(b"BOB@example.com", b"s3cret"));
        assert!(!c.check(b"bob@example.com", b"s3cre"));
        assert!(!c.check(b"bob@example.com", b"s3cret!"));
        assert!(!c.check(b"eve@example.com", b"s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
