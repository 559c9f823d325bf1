//! Where API requests go: the explicit endpoint override, or the region table of the official
//! client (public or VPC host names).

use url::Url;

/// The regions the official client knows for this API.
pub const REGIONS: &[&str] = &[
    "cn-qingdao",
    "cn-shenzhen",
    "cn-wulanchabu",
    "cn-beijing",
    "ap-northeast-1",
    "cn-chengdu",
    "cn-shanghai",
    "cn-hongkong",
    "ap-southeast-1",
    "ap-southeast-3",
    "ap-southeast-5",
    "cn-zhangjiakou",
    "cn-hangzhou",
    "us-west-1",
    "us-east-1",
    "eu-central-1",
    "eu-west-1",
    "cn-shanghai-finance-1",
];

/// Why no base URL could be had for a region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The region is not in [`REGIONS`]; the message lists them.
    #[error("unknown region {0:?}; known regions: {list}", list = REGIONS.join(", "))]
    UnknownRegion(String),
    /// The host name built from the region is not a URL.
    #[error(transparent)]
    Url(#[from] url::ParseError),
}

/// Resolves a ticket's region to a base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Used for every request when set (the simulator, a proxy, a private endpoint).
    pub override_url: Option<Url>,
    /// The configured default region.
    pub region: String,
    /// Use `ververica-vpc.<region>.aliyuncs.com`.
    pub vpc: bool,
}

impl Endpoints {
    /// The base URL for a ticket with the given region override; an error naming the region
    /// when it is not in the table. A ticket's own region must be known even when the endpoint
    /// override sends every request elsewhere, so that a typo is caught the same way everywhere.
    pub fn base_url(&self, ticket_region: Option<&str>) -> Result<Url, EndpointError> {
        if let Some(region) = ticket_region {
            check_region(region)?;
        }
        if let Some(url) = &self.override_url {
            return Ok(url.clone());
        }
        let region = ticket_region.unwrap_or(&self.region);
        check_region(region)?;
        let host = if self.vpc { "ververica-vpc" } else { "ververica" };
        Ok(Url::parse(&format!("https://{host}.{region}.aliyuncs.com"))?)
    }
}

/// Whether `region` is one the official client knows.
pub fn is_known_region(region: &str) -> bool {
    REGIONS.contains(&region)
}

/// `Ok` for a known region, else an error naming it and listing the known ones.
pub fn check_region(region: &str) -> Result<(), EndpointError> {
    if is_known_region(region) { Ok(()) } else { Err(EndpointError::UnknownRegion(region.to_owned())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(vpc: bool) -> Endpoints {
        Endpoints { override_url: None, region: "cn-hangzhou".to_owned(), vpc }
    }

    #[test]
    fn region_gives_public_or_vpc_host() {
        assert_eq!(endpoints(false).base_url(None).unwrap().as_str(), "https://ververica.cn-hangzhou.aliyuncs.com/");
        assert_eq!(
            endpoints(true).base_url(Some("eu-central-1")).unwrap().as_str(),
            "https://ververica-vpc.eu-central-1.aliyuncs.com/"
        );
    }

    #[test]
    fn unknown_region_is_refused_by_name() {
        let error = endpoints(false).base_url(Some("mars-1")).unwrap_err().to_string();
        assert!(error.starts_with("unknown region \"mars-1\"; known regions: cn-qingdao"), "{error}");
    }

    #[test]
    fn override_wins_over_any_known_region() {
        let mut endpoints = endpoints(false);
        endpoints.override_url = Some(Url::parse("http://127.0.0.1:9000").unwrap());
        assert_eq!(endpoints.base_url(Some("eu-west-1")).unwrap().as_str(), "http://127.0.0.1:9000/");
        assert_eq!(endpoints.base_url(None).unwrap().as_str(), "http://127.0.0.1:9000/");
    }

    #[test]
    fn unknown_ticket_region_is_refused_even_with_an_override() {
        let mut endpoints = endpoints(false);
        endpoints.override_url = Some(Url::parse("http://127.0.0.1:9000").unwrap());
        assert_eq!(endpoints.base_url(Some("mars-1")).unwrap_err(), EndpointError::UnknownRegion("mars-1".to_owned()));
    }
}
