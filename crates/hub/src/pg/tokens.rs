//! Station and operator tokens.
//!
//! A token is 32 random bytes, shown once in hex when it is made
//! (`flashrack hub token add`); the database keeps only its sha256, so a copy
//! of the database lets nobody in. Tokens live in the database rather than in
//! `hub.toml` so that every hub process sharing it accepts the same ones and a
//! revocation takes effect everywhere at once.
//!
//! A station token belongs to one station id: the hub takes records, live
//! reports and progress only under that id. An operator token opens the
//! operator API and the dashboard.

use flashrack_core::Sha256Digest;
use rand::RngCore;

use super::{sql, HubDb, PgError};

/// Whom a token lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A station, under its own id only.
    Station,
    /// An operator: the hub's API and dashboard.
    Operator,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Station => "station",
            Role::Operator => "operator",
        }
    }
}

/// The holder of a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    /// Its role.
    pub role: Role,
    /// The station's id, or the operator's name.
    pub name: String,
}

/// Whether `name` may be a station id or an operator name: 1-64 letters,
/// digits, `-`, `_` or `.` (as a station's `station_id`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The stored form of a token: the hex sha256 of its text.
pub fn token_hash(token: &str) -> String {
    Sha256Digest::of(token.as_bytes()).to_hex()
}

impl HubDb {
    /// Makes a token for `name` in `role`, stores its hash, and returns the
    /// token (the only time it is known).
    pub async fn add_token(&self, role: Role, name: &str) -> Result<String, PgError> {
        if !valid_name(name) {
            return Err(PgError::Invalid(format!(
                "{name:?} is not a valid name: 1-64 letters, digits, '-', '_' or '.'"
            )));
        }
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        sqlx::query("INSERT INTO tokens (sha256, role, name) VALUES ($1, $2, $3)")
            .bind(token_hash(&token))
            .bind(role.as_str())
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(sql("storing a token"))?;
        Ok(token)
    }

    /// Revokes every token of `name` in `role`; returns how many.
    pub async fn revoke_tokens(&self, role: Role, name: &str) -> Result<u64, PgError> {
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = now()
             WHERE role = $1 AND name = $2 AND revoked_at IS NULL",
        )
        .bind(role.as_str())
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(sql("revoking tokens"))?;
        Ok(done.rows_affected())
    }

    /// Who holds `token`, if it is valid (known and not revoked).
    pub async fn token_owner(&self, token: &str) -> Result<Option<TokenOwner>, PgError> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT role, name FROM tokens WHERE sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(token_hash(token))
        .fetch_optional(&self.pool)
        .await
        .map_err(sql("checking a token"))?;
        Ok(row.map(|(role, name)| TokenOwner {
            role: if role == "operator" {
                Role::Operator
            } else {
                Role::Station
            },
            name,
        }))
    }

    /// Whether any operator token is valid: without one the hub stays on
    /// loopback and its operator API is open to loopback clients.
    pub async fn has_operator_tokens(&self) -> Result<bool, PgError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tokens WHERE role = 'operator' AND revoked_at IS NULL)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(sql("looking for operator tokens"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_station_ids() {
        assert!(valid_name("lab-a"));
        assert!(valid_name("lab_b.2"));
        assert!(!valid_name(""));
        assert!(!valid_name("lab a"));
        assert!(!valid_name("lab/a"));
        assert!(!valid_name(&"x".repeat(65)));
    }

    #[test]
    fn a_token_is_stored_as_its_sha256() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
