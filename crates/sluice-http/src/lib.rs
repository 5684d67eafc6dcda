//! The HTTP connector: the `http.request` step and connections of
//! `type: http` (a base URL, headers, authentication by Basic, a bearer
//! token, an API key or OAuth 2.0 client credentials, limits). Requests go
//! through reqwest on rustls; addresses of the machine itself and of
//! private networks are refused after DNS resolution unless the connection
//! allows the host by name (`guard`); redirects, the time limit and the
//! size limit are applied hop by hop (`send`). A connection's `resources`
//! describe a REST API's collections, which the `rest.*` standardized
//! actions read and write with the rules of the `sql.*` ones (`standard`).

mod auth;
mod call;
mod client;
mod connection;
mod guard;
mod listing;
mod pages;
mod request;
mod rest;
mod send;
mod standard;

pub use call::{BodyType, HttpRequestOptions, ResponseType};
pub use connection::{Auth, HttpConnection, Paging, Resource, UpdateVerb};
pub use pages::{Mode, Next, Pages};
pub use request::HttpRequest;
pub use standard::{
    RestCreate, RestDelete, RestLookup, RestLookupMany, RestLookupManyOptions, RestLookupOptions,
    RestUpdate, RestUpsert, RestWriteOptions,
};

use sluice_action::Registry;
use std::sync::Arc;

/// Add the HTTP step types and connection type to `registry`.
pub fn register(registry: &mut Registry) {
    let clients = Arc::new(client::Clients::default());
    registry.add(HttpRequest(clients.clone()));
    registry.add(RestLookup(clients.clone()));
    registry.add(RestLookupMany(clients.clone()));
    registry.add(RestCreate(clients.clone()));
    registry.add(RestUpdate(clients.clone()));
    registry.add(RestUpsert(clients.clone()));
    registry.add(RestDelete(clients.clone()));
    registry.set_calls(Arc::new(request::HttpCalls(clients)));
    registry.add_connection("http", connection::check, connection::uses);
}

/// The core step types and triggers with HTTP's: what a program or test
/// that reaches HTTP APIs and no other connector needs.
pub fn registry() -> Registry {
    let mut r = Registry::core();
    register(&mut r);
    r
}
