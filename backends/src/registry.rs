//! The build-time registry: each backend crate submits a [`BackendDescriptor`] with
//! `inventory`; the daemon collects them once at start and refuses duplicate names.

use std::collections::BTreeMap;

use crate::preflight::{Context, Finding, Preflight};
use crate::{BackendError, Driver, NoneBackend};

/// Builds a backend (wrapped in its gate) from its own TOML table (`[firewall.<name>]`).
/// Backend crates use [`crate::create`]`::<TheirBackend>`.
pub type Constructor = fn(&toml::Table) -> Result<Box<dyn Driver>, BackendError>;

/// A backend's entry in the registry: a name, a constructor and an optional preflight, const
/// so `inventory` can collect it at link time.
#[derive(Debug)]
pub struct BackendDescriptor {
    /// The name used in `[firewall] backend = "..."`.
    pub name: &'static str,
    /// One line for `spad backends`.
    pub description: &'static str,
    /// Builds it from its table.
    pub create: Constructor,
    /// Looks at the system for what the daemon would hit with this backend (its tools, kernel
    /// interfaces, privileges, rules of others that would swallow its grants), for `spad
    /// check` and once at start; `None`: nothing to check (see [`crate::preflight`]).
    pub preflight: Option<Preflight>,
}

inventory::collect!(BackendDescriptor);

inventory::submit! {
    BackendDescriptor {
        name: "none",
        description: "changes nothing (test mode, dry runs)",
        create: crate::create::<NoneBackend>,
        preflight: None,
    }
}

/// Why the registry could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Two linked crates registered the same name.
    #[error("two backends are registered as {0:?}")]
    Duplicate(&'static str),
    /// The configuration names a backend this build does not contain.
    #[error("unknown backend {name:?}; this build contains: {available}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names this build has, comma-separated.
        available: String,
    },
    /// The backend refused its configuration.
    #[error("backend {name:?} could not be created")]
    Create {
        /// The backend.
        name: String,
        /// Why.
        #[source]
        source: BackendError,
    },
}

/// The backends this binary contains, by name.
#[derive(Debug)]
pub struct Registry {
    by_name: BTreeMap<&'static str, &'static BackendDescriptor>,
}

impl Registry {
    /// Collects every descriptor linked into this binary. Crates the binary never names are
    /// dropped by the linker with their descriptors, so the daemon names each backend crate
    /// (`use spa_backend_x as _;`) behind its feature, and a test checks the resulting list.
    pub fn collect() -> Result<Self, RegistryError> {
        Self::from_descriptors(inventory::iter::<BackendDescriptor>)
    }

    /// Builds a registry from any descriptors, refusing duplicate names.
    pub fn from_descriptors(
        descriptors: impl IntoIterator<Item = &'static BackendDescriptor>,
    ) -> Result<Self, RegistryError> {
        let mut by_name = BTreeMap::new();
        for d in descriptors {
            if by_name.insert(d.name, d).is_some() {
                return Err(RegistryError::Duplicate(d.name));
            }
        }
        Ok(Self { by_name })
    }

    /// The names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.by_name.keys().copied().collect()
    }

    /// The descriptors, sorted by name.
    pub fn descriptors(&self) -> impl Iterator<Item = &'static BackendDescriptor> + '_ {
        self.by_name.values().copied()
    }

    /// Builds the backend `name` from its table. Nothing is started: a backend touches the
    /// firewall only when the daemon starts it.
    pub fn create(&self, name: &str, table: &toml::Table) -> Result<Box<dyn Driver>, RegistryError> {
        let d = self.by_name.get(name).ok_or_else(|| RegistryError::Unknown {
            name: name.to_owned(),
            available: self.names().join(", "),
        })?;
        (d.create)(table).map_err(|source| RegistryError::Create { name: name.to_owned(), source })
    }

    /// What the preflight of backend `name` finds (nothing for a backend without one, or a
    /// name this build does not contain: [`Registry::create`] reports that).
    pub fn preflight(&self, name: &str, context: &Context<'_>) -> Vec<Finding> {
        self.by_name.get(name).and_then(|d| d.preflight).map(|p| p(context)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(_: &toml::Table) -> Result<Box<dyn Driver>, BackendError> {
        Err(BackendError::Unsupported("anything"))
    }

    fn complain(c: &Context<'_>) -> Vec<Finding> {
        vec![Finding::warning(Some("x"), format!("{} keys, forwards: {}", c.table.len(), c.forwards))]
    }

    static A: BackendDescriptor =
        BackendDescriptor { name: "a", description: "", create: fail, preflight: Some(complain) };
    static A2: BackendDescriptor =
        BackendDescriptor { name: "a", description: "", create: fail, preflight: None };
    static B: BackendDescriptor = BackendDescriptor {
        name: "b",
        description: "",
        create: crate::create::<NoneBackend>,
        preflight: None,
    };

    #[test]
    fn duplicate_names_are_refused() {
        assert!(matches!(Registry::from_descriptors([&A, &B, &A2]), Err(RegistryError::Duplicate("a"))));
    }

    #[test]
    fn unknown_name_lists_what_exists() {
        let r = Registry::from_descriptors([&A, &B]).unwrap();
        let err = r.create("nft", &toml::Table::new()).err().unwrap().to_string();
        assert_eq!(err, "unknown backend \"nft\"; this build contains: a, b");
        assert!(r.create("b", &toml::Table::new()).is_ok());
        assert!(matches!(r.create("a", &toml::Table::new()), Err(RegistryError::Create { .. })));
    }

    #[test]
    fn a_preflight_runs_with_its_context_and_its_absence_finds_nothing() {
        let r = Registry::from_descriptors([&A, &B]).unwrap();
        let table: toml::Table = "y = 1".parse().unwrap();
        let c = Context { table: &table, forwards: true };
        assert_eq!(r.preflight("a", &c), vec![Finding::warning(Some("x"), "1 keys, forwards: true")]);
        assert!(r.preflight("b", &c).is_empty());
        assert!(r.preflight("nope", &c).is_empty());
    }

    #[test]
    fn this_crate_registers_none() {
        assert_eq!(Registry::collect().unwrap().names(), vec!["none"]);
    }
}
