//! Nodes: list, get, delete, expire, rename, tags, routes, and completing a pending
//! registration.

use reqwest::Method;

use super::client::{Call, Client};
use super::error::Error;
use super::models::{
    AuthRegisterBody, Empty, ExpireNodeBody, ExpiryChange, Node, NodeEnvelope, NodeId, NodesEnvelope,
    RoutesBody, TagsBody,
};
use super::version::{ApiShape, ExpiryParams, NeverExpires, Registration};

/// Go's zero time, which 0.27–0.28 read as "no expiry".
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl Client {
    /// Every node, or those of the user called `user`. Tagged nodes show the
    /// synthetic user `tagged-devices` here (0.28+).
    pub async fn list_nodes(&self, user: Option<&str>) -> Result<Vec<Node>, Error> {
        self.api_shape().await?;
        let mut call = Call::get("list nodes", &["api", "v1", "node"]);
        if let Some(user) = user {
            call = call.query("user", user);
        }
        let out: NodesEnvelope = self.call(call).await?;
        Ok(out.nodes)
    }

    pub async fn get_node(&self, id: NodeId) -> Result<Node, Error> {
        self.api_shape().await?;
        let id = id.to_string();
        let out: NodeEnvelope = self
            .call(Call::get("get node", &["api", "v1", "node", &id]))
            .await?;
        Ok(out.node)
    }

    pub async fn delete_node(&self, id: NodeId) -> Result<(), Error> {
        self.api_shape().await?;
        let id = id.to_string();
        self.call::<Empty>(Call::new(
            "delete node",
            Method::DELETE,
            &["api", "v1", "node", &id],
        ))
        .await
        .map(drop)
    }

    /// Expires the node now, at a time, or never. The request shape depends on the
    /// version: a wrong guess expires the node at once instead (reference trap 2).
    pub async fn expire_node(&self, id: NodeId, change: ExpiryChange) -> Result<Node, Error> {
        let (_, shape) = self.api_shape().await?;
        let out: NodeEnvelope = self.call(expire_node_call(&shape, id, change)).await?;
        Ok(out.node)
    }

    /// Sets the node's given name (its MagicDNS label).
    pub async fn rename_node(&self, id: NodeId, new_name: &str) -> Result<Node, Error> {
        self.api_shape().await?;
        let id = id.to_string();
        let out: NodeEnvelope = self
            .call(Call::post(
                "rename node",
                &["api", "v1", "node", &id, "rename", new_name],
            ))
            .await?;
        Ok(out.node)
    }

    /// Replaces the node's tags. From 0.28 every tag must be owned in the policy's
    /// `tagOwners`, the list must not be empty, and a tagged node stays tagged.
    pub async fn set_tags(&self, id: NodeId, tags: &[String]) -> Result<Node, Error> {
        self.api_shape().await?;
        let id = id.to_string();
        let out: NodeEnvelope = self
            .call(Call::post("set tags", &["api", "v1", "node", &id, "tags"]).json(&TagsBody { tags }))
            .await?;
        Ok(out.node)
    }

    /// Replaces the node's approved routes (`[]` clears them).
    pub async fn approve_routes(&self, id: NodeId, routes: &[String]) -> Result<Node, Error> {
        self.api_shape().await?;
        let id = id.to_string();
        let out: NodeEnvelope = self
            .call(
                Call::post("approve routes", &["api", "v1", "node", &id, "approve_routes"])
                    .json(&RoutesBody { routes }),
            )
            .await?;
        Ok(out.node)
    }

    /// Completes a pending interactive registration: the node whose client printed
    /// `auth_id` joins as a node of `user` (a user name). An unknown, expired (15
    /// min) or restart-dropped id is [`Error::NotFound`].
    pub async fn register_node(&self, auth_id: &str, user: &str) -> Result<Node, Error> {
        let (_, shape) = self.api_shape().await?;
        let out: NodeEnvelope = self.call(register_call(&shape, auth_id, user)).await?;
        Ok(out.node)
    }
}

/// `POST /node/{id}/expire` for this version. Pure.
pub(crate) fn expire_node_call(shape: &ApiShape, id: NodeId, change: ExpiryChange) -> Call {
    let id = id.to_string();
    let mut call = Call::post("expire node", &["api", "v1", "node", &id, "expire"]);
    let (expiry, disable) = match (change, shape.never_expires) {
        (ExpiryChange::Now, _) => (None, false),
        (ExpiryChange::At(t), _) => (Some(t.to_string()), false),
        (ExpiryChange::Disable, NeverExpires::DisableFlag) => (None, true),
        (ExpiryChange::Disable, NeverExpires::ZeroTime) => (Some(ZERO_TIME.to_string()), false),
    };
    let in_query = matches!(
        shape.expiry_params,
        ExpiryParams::Query | ExpiryParams::QueryAndBody
    );
    let in_body = matches!(
        shape.expiry_params,
        ExpiryParams::Body | ExpiryParams::QueryAndBody
    );
    if in_query {
        if let Some(t) = &expiry {
            call = call.query("expiry", t);
        }
        if disable {
            call = call.query("disableExpiry", "true");
        }
    }
    if in_body {
        let body = ExpireNodeBody {
            expiry: match change {
                ExpiryChange::At(t) => Some(t),
                _ => None,
            },
            disable_expiry: disable,
        };
        call = call.json(&body);
    }
    call
}

/// The registration call for this version. Pure.
pub(crate) fn register_call(shape: &ApiShape, auth_id: &str, user: &str) -> Call {
    match shape.registration {
        Registration::AuthRegister => Call::post("register node", &["api", "v1", "auth", "register"])
            .json(&AuthRegisterBody { user, auth_id }),
        Registration::NodeRegister => Call::post("register node", &["api", "v1", "node", "register"])
            .query("user", user)
            .query("key", auth_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headscale::version::Version;
    use serde_json::json;

    fn shape(v: &str) -> ApiShape {
        ApiShape::for_version(&Version::parse(v).unwrap())
    }

    /// What each version is sent for each change (reference §1.4, trap 2).
    #[test]
    fn expire_node_request_per_version() {
        let at: jiff::Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let q = |pairs: &[(&'static str, &str)]| {
            pairs.iter().map(|(k, v)| (*k, v.to_string())).collect::<Vec<_>>()
        };
        type Row = (
            &'static str,
            ExpiryChange,
            Vec<(&'static str, String)>,
            Option<serde_json::Value>,
        );
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            ("v0.27.1", ExpiryChange::Now, q(&[]), None),
            ("v0.27.1", ExpiryChange::At(at), q(&[("expiry", "2030-01-01T00:00:00Z")]), None),
            ("v0.27.1", ExpiryChange::Disable, q(&[("expiry", ZERO_TIME)]), None),
            ("v0.28.0", ExpiryChange::Disable, q(&[("expiry", ZERO_TIME)]), None),
            ("v0.29.2", ExpiryChange::Now, q(&[]), None),
            ("v0.29.2", ExpiryChange::At(at), q(&[("expiry", "2030-01-01T00:00:00Z")]), None),
            ("v0.29.2", ExpiryChange::Disable, q(&[("disableExpiry", "true")]), None),
            ("v0.29.3-0.20260721000000-f20f1f12abcd", ExpiryChange::Disable, q(&[("disableExpiry", "true")]), Some(json!({"disableExpiry": true}))),
            ("v0.30.0", ExpiryChange::Now, q(&[]), Some(json!({}))),
            ("v0.30.0", ExpiryChange::At(at), q(&[]), Some(json!({"expiry": "2030-01-01T00:00:00Z"}))),
            ("v0.30.0", ExpiryChange::Disable, q(&[]), Some(json!({"disableExpiry": true}))),
        ];
        for (v, change, query, body) in table {
            let call = expire_node_call(&shape(v), NodeId(7), change);
            assert_eq!(call.segments(), ["api", "v1", "node", "7", "expire"]);
            assert_eq!(call.query_pairs(), query.as_slice(), "{v} {change:?}");
            assert_eq!(call.body_json(), body.as_ref(), "{v} {change:?}");
        }
    }

    #[test]
    fn registration_per_version() {
        let call = register_call(&shape("v0.28.0"), "AbCdEfGhIjKlMnOpQrStUvWx", "alice");
        assert_eq!(call.segments(), ["api", "v1", "node", "register"]);
        assert_eq!(
            call.query_pairs(),
            [
                ("user", "alice".to_string()),
                ("key", "AbCdEfGhIjKlMnOpQrStUvWx".to_string())
            ]
        );
        assert_eq!(call.body_json(), None);
        let call = register_call(&shape("v0.29.2"), "hskey-authreq-x", "alice");
        assert_eq!(call.segments(), ["api", "v1", "auth", "register"]);
        assert!(call.query_pairs().is_empty());
        assert_eq!(
            call.body_json(),
            Some(&json!({"user": "alice", "authId": "hskey-authreq-x"}))
        );
    }
}
