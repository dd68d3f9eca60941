//! The ACL policy (database mode): get, check (0.29+), set.
//!
//! Every set appends a row and pushes to every client, even when nothing changed
//! (reference trap 12): callers diff against [`Client::get_policy`] first.

use reqwest::Method;

use super::client::{Call, Client};
use super::error::Error;
use super::models::{Empty, Policy, PolicyBody};

impl Client {
    /// The stored policy; `None` when none was ever stored (0.27–0.29 answer that
    /// with HTTP 500 "acl policy not found").
    pub async fn get_policy(&self) -> Result<Option<Policy>, Error> {
        self.api_shape().await?;
        match self.call(Call::get("get policy", &["api", "v1", "policy"])).await {
            Ok(policy) => Ok(Some(policy)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Asks the server whether it would accept `policy` (parsing, users, nodes, the
    /// `tests` block) without storing it. [`Error::PolicyRejected`] carries
    /// Headscale's reason. 0.27–0.28 have no such call: [`Error::Unsupported`].
    pub async fn check_policy(&self, policy: &str) -> Result<(), Error> {
        const OP: &str = "check policy";
        let (version, shape) = self.api_shape().await?;
        if !shape.policy_check {
            return Err(Client::unsupported(
                OP,
                &version,
                "checking a policy on the server needs Headscale 0.29 or newer",
            ));
        }
        self.call::<Empty>(Call::post(OP, &["api", "v1", "policy", "check"]).json(&PolicyBody { policy }))
            .await
            .map(drop)
            .map_err(Error::into_policy_rejection)
    }

    /// Stores and applies `policy`. An invalid one changes nothing and is
    /// [`Error::PolicyRejected`] with Headscale's reason.
    pub async fn set_policy(&self, policy: &str) -> Result<Policy, Error> {
        self.api_shape().await?;
        self.call(Call::new("set policy", Method::PUT, &["api", "v1", "policy"]).json(&PolicyBody { policy }))
            .await
            .map_err(Error::into_policy_rejection)
    }
}
