//! The two credential files of the default chain, parsed from their text: the aliyun CLI's
//! `~/.aliyun/config.json` (profiles with a `mode`) and the SDKs' INI file
//! (`~/.alibabacloud/credentials.ini`, sections with a `type`).
//!
//! Pure: the caller reads the files and decides what a missing file means. Errors name the file's
//! keys and the profile, never a value.

use std::collections::HashMap;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

use super::super::Credentials;

/// What a profile tells the chain to do.
#[derive(Debug, Clone)]
pub(super) enum Profile {
    /// Sign with these (an AccessKey pair, optionally with an STS token).
    Static(Credentials),
    /// Ask the ECS metadata service, for this role or the instance's role.
    EcsRamRole {
        /// The role name; discovered from the metadata service when absent.
        role: Option<String>,
    },
    /// AssumeRoleWithOIDC with a token file.
    Oidc {
        /// The OIDC token file, re-read on every refresh.
        token_file: PathBuf,
        /// `acs:ram::<account>:role/<name>`.
        role_arn: String,
        /// `acs:ram::<account>:oidc-provider/<name>`.
        provider_arn: String,
        /// The role session name, when the profile sets one.
        session_name: Option<String>,
    },
    /// GET credentials from this URL.
    Uri(String),
}

/// A profile found in a file: its name, its mode or type as written, and what it means.
#[derive(Debug, Clone)]
pub(super) struct Found {
    /// The profile (or INI section) name.
    pub(super) name: String,
    /// `mode` (config.json) or `type` (INI) as written.
    pub(super) kind: String,
    /// What to do with it.
    pub(super) profile: Profile,
}

/// The modes of `~/.aliyun/config.json` this daemon can use.
pub(super) const SUPPORTED_CLI_MODES: &str = "AK, StsToken, EcsRamRole, OIDC, CredentialsURI";

/// The types of the INI credentials file this daemon can use.
pub(super) const SUPPORTED_INI_TYPES: &str = "access_key, ecs_ram_role";

/// Why a credential file could not be used. Messages name keys, profiles and lines, never a value.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProfileError {
    /// `config.json` is not JSON of the expected shape.
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A `config.json` profile lacks a key its mode needs.
    #[error("profile {profile:?} (mode {mode}) has no {key}")]
    MissingKey {
        /// The profile name.
        profile: String,
        /// Its mode as written.
        mode: String,
        /// The key it lacks.
        key: &'static str,
    },
    /// A `config.json` profile uses a mode this daemon cannot use.
    #[error(
        "profile {profile:?} uses mode {mode:?}, which flink-ticketd does not support \
         (supported: {SUPPORTED_CLI_MODES}); choose another profile with ALIBABA_CLOUD_PROFILE, \
         or configure flink.access_key_id"
    )]
    UnsupportedMode {
        /// The profile name.
        profile: String,
        /// Its mode as written.
        mode: String,
    },
    /// An INI section lacks a key its type needs.
    #[error("section [{section}] (type {kind}) has no {key}")]
    MissingIniKey {
        /// The section name.
        section: String,
        /// Its type as written.
        kind: String,
        /// The key it lacks.
        key: &'static str,
    },
    /// An INI section has no `type`.
    #[error("section [{0}] has no type")]
    NoType(String),
    /// An INI section has a type this daemon cannot use.
    #[error(
        "section [{section}] has type {kind:?}, which flink-ticketd does not support \
         (supported: {SUPPORTED_INI_TYPES}); choose another section with ALIBABA_CLOUD_PROFILE, \
         or configure flink.access_key_id"
    )]
    UnsupportedType {
        /// The section name.
        section: String,
        /// Its type as written.
        kind: String,
    },
    /// An INI line is neither a header nor a key (1-based line number).
    #[error("line {0} is neither [section] nor key = value")]
    Line(usize),
    /// An INI key comes before the first header (1-based line number).
    #[error("line {0} comes before any [section]")]
    BeforeSection(usize),
}

/// Finds profile `wanted` (else the file's `current`, else `default`) in the text of the aliyun
/// CLI's `config.json`. `Ok(None)` when there is no such profile.
pub(super) fn cli_profile(text: &str, wanted: Option<&str>) -> Result<Option<Found>, ProfileError> {
    let file: CliConfig = serde_json::from_str(text)?;
    let name = wanted
        .map(str::to_owned)
        .or_else(|| file.current.filter(|current| !current.trim().is_empty()))
        .unwrap_or_else(|| "default".to_owned());
    let Some(raw) = file.profiles.into_iter().find(|profile| profile.name == name) else {
        return Ok(None);
    };
    let mode = raw.mode.clone().unwrap_or_default();
    let field = |value: &Option<String>, key: &'static str| -> Result<String, ProfileError> {
        value
            .as_deref()
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ProfileError::MissingKey { profile: name.clone(), mode: mode.clone(), key })
    };
    let optional =
        |value: &Option<String>| value.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    let profile = match mode.as_str() {
        "AK" | "" => Profile::Static(Credentials {
            access_key_id: field(&raw.access_key_id, "access_key_id")?,
            access_key_secret: SecretString::from(field(&raw.access_key_secret, "access_key_secret")?),
            security_token: None,
        }),
        "StsToken" => Profile::Static(Credentials {
            access_key_id: field(&raw.access_key_id, "access_key_id")?,
            access_key_secret: SecretString::from(field(&raw.access_key_secret, "access_key_secret")?),
            security_token: Some(SecretString::from(field(&raw.sts_token, "sts_token")?)),
        }),
        "EcsRamRole" => Profile::EcsRamRole { role: optional(&raw.ram_role_name) },
        "OIDC" => Profile::Oidc {
            token_file: PathBuf::from(field(&raw.oidc_token_file, "oidc_token_file")?),
            role_arn: field(&raw.ram_role_arn, "ram_role_arn")?,
            provider_arn: field(&raw.oidc_provider_arn, "oidc_provider_arn")?,
            session_name: optional(&raw.ram_session_name),
        },
        "CredentialsURI" => Profile::Uri(field(&raw.credentials_uri, "credentials_uri")?),
        other => return Err(ProfileError::UnsupportedMode { profile: name, mode: other.to_owned() }),
    };
    Ok(Some(Found { name, kind: if mode.is_empty() { "AK".to_owned() } else { mode }, profile }))
}

/// Finds section `section` in the text of the INI credentials file. `Ok(None)` when there is no
/// such section.
pub(super) fn ini_profile(text: &str, section: &str) -> Result<Option<Found>, ProfileError> {
    let sections = parse_ini(text)?;
    let Some(keys) = sections.get(section) else {
        return Ok(None);
    };
    let kind = keys.get("type").cloned().unwrap_or_default();
    let field = |key: &'static str| -> Result<String, ProfileError> {
        keys.get(key).filter(|value| !value.is_empty()).cloned().ok_or_else(|| ProfileError::MissingIniKey {
            section: section.to_owned(),
            kind: kind.clone(),
            key,
        })
    };
    let profile = match kind.as_str() {
        "access_key" => Profile::Static(Credentials {
            access_key_id: field("access_key_id")?,
            access_key_secret: SecretString::from(field("access_key_secret")?),
            security_token: None,
        }),
        "ecs_ram_role" => Profile::EcsRamRole { role: keys.get("role_name").filter(|role| !role.is_empty()).cloned() },
        "" => return Err(ProfileError::NoType(section.to_owned())),
        other => {
            return Err(ProfileError::UnsupportedType { section: section.to_owned(), kind: other.to_owned() });
        }
    };
    Ok(Some(Found { name: section.to_owned(), kind, profile }))
}

#[derive(Debug, Deserialize)]
struct CliConfig {
    #[serde(default)]
    current: Option<String>,
    #[serde(default)]
    profiles: Vec<CliProfile>,
}

#[derive(Debug, Deserialize)]
struct CliProfile {
    name: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    access_key_id: Option<String>,
    #[serde(default)]
    access_key_secret: Option<String>,
    #[serde(default)]
    sts_token: Option<String>,
    #[serde(default)]
    ram_role_name: Option<String>,
    #[serde(default)]
    ram_role_arn: Option<String>,
    #[serde(default)]
    ram_session_name: Option<String>,
    #[serde(default)]
    oidc_provider_arn: Option<String>,
    #[serde(default)]
    oidc_token_file: Option<String>,
    #[serde(default)]
    credentials_uri: Option<String>,
}

/// `[section]` headers and `key = value` lines; `;` and `#` start comment lines.
fn parse_ini(text: &str) -> Result<HashMap<String, HashMap<String, String>>, ProfileError> {
    let mut sections: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current: Option<String> = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            let name = name.trim().to_owned();
            sections.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(ProfileError::Line(index + 1));
        };
        let Some(section) = &current else {
            return Err(ProfileError::BeforeSection(index + 1));
        };
        let value = value.trim().trim_matches('"').to_owned();
        sections.entry(section.clone()).or_default().insert(key.trim().to_owned(), value);
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;

    const CONFIG_JSON: &str = r#"{
        "current": "work",
        "profiles": [
            {"name": "default", "mode": "AK", "access_key_id": "AK-default", "access_key_secret": "s-default"},
            {"name": "work", "mode": "StsToken", "access_key_id": "STS.work", "access_key_secret": "s-work",
             "sts_token": "tok-work"},
            {"name": "ecs", "mode": "EcsRamRole", "ram_role_name": "ticketd"},
            {"name": "assume", "mode": "RamRoleArn", "access_key_id": "a", "access_key_secret": "b",
             "ram_role_arn": "acs:ram::1:role/x"}
        ]
    }"#;

    #[test]
    fn cli_profile_defaults_to_the_current_one() {
        let found = cli_profile(CONFIG_JSON, None).unwrap().expect("the current profile exists");
        assert_eq!((found.name.as_str(), found.kind.as_str()), ("work", "StsToken"));
        let Profile::Static(credentials) = found.profile else { panic!("StsToken gives static credentials") };
        assert_eq!(credentials.access_key_id, "STS.work");
        assert_eq!(credentials.security_token.expect("a token").expose_secret(), "tok-work");
    }

    #[test]
    fn cli_profile_named_by_the_caller_wins_over_current() {
        let found = cli_profile(CONFIG_JSON, Some("default")).unwrap().expect("default exists");
        assert!(matches!(found.profile, Profile::Static(ref c) if c.security_token.is_none()));
        let ecs = cli_profile(CONFIG_JSON, Some("ecs")).unwrap().expect("ecs exists");
        assert!(matches!(ecs.profile, Profile::EcsRamRole { role: Some(ref role) } if role == "ticketd"));
        assert!(cli_profile(CONFIG_JSON, Some("nope")).unwrap().is_none());
    }

    #[test]
    fn unsupported_cli_mode_is_named_in_the_error() {
        let error = cli_profile(CONFIG_JSON, Some("assume")).unwrap_err().to_string();
        assert!(error.contains("\"RamRoleArn\"") && error.contains("\"assume\""), "{error}");
        assert!(!error.contains("acs:ram::1:role/x") && !error.contains("\"b\""), "{error}");
    }

    #[test]
    fn ini_section_of_type_access_key_gives_a_key_pair() {
        let text = "; comment\n[default]\ntype = access_key\naccess_key_id = AK1\naccess_key_secret = \"s1\"\n\
                    [other]\ntype = rsa_key_pair\n";
        let found = ini_profile(text, "default").unwrap().expect("default exists");
        let Profile::Static(credentials) = found.profile else { panic!("access_key gives static credentials") };
        assert_eq!(credentials.access_key_id, "AK1");
        assert_eq!(credentials.access_key_secret.expose_secret(), "s1");
        let error = ini_profile(text, "other").unwrap_err().to_string();
        assert!(error.contains("\"rsa_key_pair\""), "{error}");
        assert!(ini_profile(text, "missing").unwrap().is_none());
        assert!(ini_profile("key = value\n", "default").is_err());
    }
}
