//! How services prove who they are on the service listener: one username and password, and a
//! minimum strength for the password. (Guessing is slowed by the door: a wrong password is
//! answered after a delay, with logins under way capped per address.)

use sha2::{Digest, Sha256};

use crate::settings::Secret;

/// Shortest service password accepted outside development mode.
pub const MIN_PASSWORD_CHARS: usize = 16;
/// Least estimated strength accepted outside development mode, in bits.
pub const MIN_PASSWORD_BITS: f64 = 64.0;

/// Why a password is too weak, or `None` when it is strong enough.
///
/// The estimate is deliberately simple: length times the bits of the alphabet the characters
/// come from (lower case, upper case, digits, other), which rewards length and variety and
/// refuses the short or one-character passwords an operator types by hand. A generated secret
/// (`openssl rand -base64 32`) passes with room to spare.
pub fn password_weakness(password: &str) -> Option<String> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Some(format!(
            "has {chars} characters; at least {MIN_PASSWORD_CHARS} are required"
        ));
    }
    let distinct: std::collections::HashSet<char> = password.chars().collect();
    if distinct.len() < 6 {
        return Some(format!(
            "uses only {} distinct characters; at least 6 are required",
            distinct.len()
        ));
    }
    let mut alphabet = 0u32;
    if password.chars().any(|c| c.is_ascii_lowercase()) {
        alphabet += 26;
    }
    if password.chars().any(|c| c.is_ascii_uppercase()) {
        alphabet += 26;
    }
    if password.chars().any(|c| c.is_ascii_digit()) {
        alphabet += 10;
    }
    if password.chars().any(|c| !c.is_ascii_alphanumeric()) {
        alphabet += 33;
    }
    let bits = chars as f64 * f64::from(alphabet).log2();
    (bits < MIN_PASSWORD_BITS).then(|| {
        format!("is estimated at {bits:.0} bits; at least {MIN_PASSWORD_BITS:.0} are required")
    })
}

/// The one username and password the service listener accepts.
pub(crate) struct ServiceCredentials {
    username: String,
    /// Only a digest is kept, so comparing takes the same time whatever the guess.
    password_digest: [u8; 32],
}

impl std::fmt::Debug for ServiceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl ServiceCredentials {
    pub(crate) fn new(username: String, password: &Secret) -> Self {
        Self {
            username,
            password_digest: digest(password.expose()),
        }
    }

    pub(crate) fn check(&self, username: &str, password: &[u8]) -> bool {
        // Constant-time comparison of equal-length digests: no early exit on the first
        // differing byte, and the password's length does not show either.
        let difference = Sha256::digest(password)
            .iter()
            .zip(self.password_digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        username == self.username && difference == 0
    }
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_credentials_accept_only_the_configured_pair() {
        let credentials = ServiceCredentials::new("ecs-cloud".into(), &Secret::new("s3cret"));
        assert!(credentials.check("ecs-cloud", b"s3cret"));
        assert!(!credentials.check("ecs-cloud", b"s3cret "));
        assert!(!credentials.check("ecs-cloud", b""));
        assert!(!credentials.check("other", b"s3cret"));
    }

    #[test]
    fn weak_passwords_are_named_and_strong_ones_pass() {
        assert!(password_weakness("pw").unwrap().contains("at least 16"));
        assert!(
            password_weakness("aaaaaaaaaaaaaaaaaaaa")
                .unwrap()
                .contains("distinct")
        );
        assert!(
            password_weakness("1234567890123456")
                .unwrap()
                .contains("bits")
        );
        assert_eq!(password_weakness("test-service-password"), None);
        assert_eq!(password_weakness("q8Rk2vLw9ZpT4xNc"), None);
    }
}
