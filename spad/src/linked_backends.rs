//! The backend crates this build contains. `inventory` only sees descriptors from crates the
//! binary names, so each enabled backend crate is named here behind its cargo feature; a test
//! checks that the registry then holds exactly these.

#[cfg(feature = "backend-firewalld")]
use spa_backend_firewalld as _;
#[cfg(feature = "backend-ipfw")]
use spa_backend_ipfw as _;
#[cfg(feature = "backend-iptables")]
use spa_backend_iptables as _;
#[cfg(feature = "backend-nft")]
use spa_backend_nft as _;
#[cfg(feature = "backend-pf")]
use spa_backend_pf as _;
#[cfg(feature = "backend-script")]
use spa_backend_script as _;

/// The backend names a build with the current features must contain.
pub fn expected() -> Vec<&'static str> {
    let mut v = vec!["none"];
    if cfg!(feature = "backend-firewalld") {
        v.push("firewalld");
    }
    if cfg!(feature = "backend-iptables") {
        v.push("iptables");
    }
    if cfg!(feature = "backend-nft") {
        v.push("nft");
    }
    if cfg!(feature = "backend-pf") {
        v.push("pf");
    }
    if cfg!(feature = "backend-ipfw") {
        v.push("ipfw");
    }
    if cfg!(feature = "backend-script") {
        v.push("script");
    }
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn registry_holds_exactly_the_enabled_backends() {
        let names = spa_backends::Registry::collect().expect("no duplicate backend names").names();
        assert_eq!(names, super::expected());
    }
}
