//! Finding the credentials to sign with: the explicit configuration keys first, then the
//! `ALIBABA_CLOUD_ACCESS_KEY_ID` / `_ACCESS_KEY_SECRET` / `_SECURITY_TOKEN` environment variables.

use std::sync::Arc;

use secrecy::SecretString;

use super::{CredentialSource, Credentials};

/// Resolves the credentials: `explicit` (from the configuration) wins, then the environment as
/// read by `env`. The error says what was looked for, never a secret.
pub fn resolve(
    explicit: Option<Credentials>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<CredentialSource, String> {
    if let Some(credentials) = explicit {
        return Ok(CredentialSource {
            name: "configuration (flink.access_key_id)",
            credentials: Arc::new(credentials),
        });
    }
    let non_empty = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    match (non_empty("ALIBABA_CLOUD_ACCESS_KEY_ID"), non_empty("ALIBABA_CLOUD_ACCESS_KEY_SECRET")) {
        (Some(id), Some(secret)) => Ok(CredentialSource {
            name: "environment (ALIBABA_CLOUD_ACCESS_KEY_ID)",
            credentials: Arc::new(Credentials {
                access_key_id: id.trim().to_owned(),
                access_key_secret: SecretString::from(secret.trim().to_owned()),
                security_token: non_empty("ALIBABA_CLOUD_SECURITY_TOKEN")
                    .map(|token| SecretString::from(token.trim().to_owned())),
            }),
        }),
        (Some(_), None) => {
            Err("ALIBABA_CLOUD_ACCESS_KEY_ID is set but ALIBABA_CLOUD_ACCESS_KEY_SECRET is not".to_owned())
        }
        (None, Some(_)) => {
            Err("ALIBABA_CLOUD_ACCESS_KEY_SECRET is set but ALIBABA_CLOUD_ACCESS_KEY_ID is not".to_owned())
        }
        (None, None) => Err("no credentials found: set flink.access_key_id and flink.access_key_secret \
             (or its _file form), or the ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET \
             environment variables"
            .to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| (*value).to_owned())
    }

    #[test]
    fn explicit_credentials_win_over_the_environment() {
        let explicit = Credentials {
            access_key_id: "cfg".to_owned(),
            access_key_secret: SecretString::from("s".to_owned()),
            security_token: None,
        };
        let source = resolve(Some(explicit), env(&[("ALIBABA_CLOUD_ACCESS_KEY_ID", "env")])).unwrap();
        assert_eq!(source.credentials.access_key_id, "cfg");
    }

    #[test]
    fn environment_supplies_key_and_optional_token() {
        let source = resolve(
            None,
            env(&[
                ("ALIBABA_CLOUD_ACCESS_KEY_ID", "id"),
                ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "secret"),
                ("ALIBABA_CLOUD_SECURITY_TOKEN", "token"),
            ]),
        )
        .unwrap();
        assert_eq!(source.credentials.access_key_id, "id");
        assert_eq!(source.credentials.security_token.as_ref().unwrap().expose_secret(), "token");
    }

    #[test]
    fn half_configured_environment_is_named_in_the_error() {
        let error = resolve(None, env(&[("ALIBABA_CLOUD_ACCESS_KEY_ID", "id")])).unwrap_err();
        assert!(error.contains("ALIBABA_CLOUD_ACCESS_KEY_SECRET is not"), "{error}");
        assert!(resolve(None, env(&[])).unwrap_err().starts_with("no credentials found"));
    }
}
