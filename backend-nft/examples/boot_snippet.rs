//! Prints the boot-time protection snippet for a `[firewall.nft]` table given as a TOML file
//! (or the defaults with `protect = ["tcp/22"]`), e.g. to regenerate conf/nft/spa-protect.nft:
//!
//! ```text
//! cargo run -p spa-backend-nft --example boot_snippet [nft.toml] > conf/nft/spa-protect.nft
//! ```

use spa_backend_nft::{NftConfig, render};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = match std::env::args().nth(1) {
        Some(path) => NftConfig::from_table(&std::fs::read_to_string(path)?.parse()?)?,
        None => NftConfig { protect: vec!["tcp/22".parse()?], ..NftConfig::default() },
    };
    print!("{}", render::boot_snippet(&config));
    Ok(())
}
