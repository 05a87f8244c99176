pub mod hpack;
