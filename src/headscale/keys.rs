//! Pre-auth keys and API keys. Creating one always sends an expiration (an omitted
//! one is stored as the zero time: a dead key, reference trap 1); the full key is
//! returned once, as a [`SecretString`](crate::secret::SecretString), and nothing
//! else in here ever holds it.

use jiff::Timestamp;
use reqwest::Method;
use serde::Serialize;

use super::client::{Call, Client};
use super::error::Error;
use super::models::{
    ApiKey, ApiKeyRef, ApiKeysEnvelope, CreatePreAuthKeyBody, Empty, ExpirationBody, NewApiKey,
    NewApiKeyEnvelope, NewPreAuthKey, PreAuthKey, PreAuthKeyEnvelope, PreAuthKeyId, PreAuthKeySpec,
    PreAuthKeysEnvelope, WirePreAuthKey,
};
use super::version::{PreAuthKeyListing, PreAuthKeyRef};

impl Client {
    /// Creates a pre-auth key owned by a user, or by tags (0.28+).
    pub async fn create_pre_auth_key(&self, spec: &PreAuthKeySpec) -> Result<NewPreAuthKey, Error> {
        const OP: &str = "create pre-auth key";
        future_expiration(OP, spec.expiration)?;
        let (version, shape) = self.api_shape().await?;
        if spec.user.is_none() && !shape.tag_only_pre_auth_keys {
            return Err(Client::unsupported(
                OP,
                &version,
                "a pre-auth key without a user needs Headscale 0.28 or newer",
            ));
        }
        let body = CreatePreAuthKeyBody {
            user: spec.user,
            reusable: spec.reusable,
            ephemeral: spec.ephemeral,
            expiration: spec.expiration,
            acl_tags: &spec.tags,
        };
        let out: PreAuthKeyEnvelope = self
            .call(Call::post(OP, &["api", "v1", "preauthkey"]).json(&body))
            .await?;
        let key = out.pre_auth_key.key.clone();
        Ok(NewPreAuthKey {
            key,
            info: PreAuthKey::from(out.pre_auth_key),
        })
    }

    /// Every pre-auth key, keys masked or dropped.
    pub async fn list_pre_auth_keys(&self) -> Result<Vec<PreAuthKey>, Error> {
        Ok(self
            .list_wire_pre_auth_keys()
            .await?
            .into_iter()
            .map(PreAuthKey::from)
            .collect())
    }

    /// 0.28+ list every key in one call; 0.27 only per user (`?user=<id>` required).
    async fn list_wire_pre_auth_keys(&self) -> Result<Vec<WirePreAuthKey>, Error> {
        const OP: &str = "list pre-auth keys";
        let (_, shape) = self.api_shape().await?;
        match shape.pre_auth_key_listing {
            PreAuthKeyListing::All => {
                let out: PreAuthKeysEnvelope = self.call(Call::get(OP, &["api", "v1", "preauthkey"])).await?;
                Ok(out.pre_auth_keys)
            }
            PreAuthKeyListing::PerUser => {
                let mut all = Vec::new();
                for user in self.list_users().await? {
                    let out: PreAuthKeysEnvelope = self
                        .call(Call::get(OP, &["api", "v1", "preauthkey"]).query("user", user.id))
                        .await?;
                    all.extend(out.pre_auth_keys);
                }
                all.sort_by_key(|k| k.id);
                Ok(all)
            }
        }
    }

    /// Sets the key's expiration to now. 0.28–0.29 answer success for an unknown id;
    /// 0.27 names keys by user and full key, found through the listing (an unknown id
    /// is [`Error::NotFound`] there).
    pub async fn expire_pre_auth_key(&self, id: PreAuthKeyId) -> Result<(), Error> {
        const OP: &str = "expire pre-auth key";
        let (_, shape) = self.api_shape().await?;
        let call = Call::post(OP, &["api", "v1", "preauthkey", "expire"]);
        let call = match shape.pre_auth_key_ref {
            PreAuthKeyRef::Id => call.json(&IdBody { id: id.to_string() }),
            PreAuthKeyRef::UserAndKey => {
                let key = self
                    .list_wire_pre_auth_keys()
                    .await?
                    .into_iter()
                    .find(|k| k.id == id)
                    .ok_or_else(|| Error::NotFound {
                        op: OP,
                        message: format!("no pre-auth key with id {id}"),
                    })?;
                let user = key.user.as_ref().map(|u| u.id.to_string()).unwrap_or_default();
                call.json(&UserAndKeyBody {
                    user,
                    key: key.key.expose(),
                })
            }
        };
        self.call::<Empty>(call).await.map(drop)
    }

    /// Deletes a pre-auth key (0.28+). Nodes it registered keep running.
    pub async fn delete_pre_auth_key(&self, id: PreAuthKeyId) -> Result<(), Error> {
        const OP: &str = "delete pre-auth key";
        let (version, shape) = self.api_shape().await?;
        if !shape.pre_auth_key_delete {
            return Err(Client::unsupported(
                OP,
                &version,
                "deleting a pre-auth key needs Headscale 0.28 or newer",
            ));
        }
        self.call::<Empty>(Call::new(OP, Method::DELETE, &["api", "v1", "preauthkey"]).query("id", id))
            .await
            .map(drop)
    }

    /// Creates an API key valid until `expiration`. The key is full admin.
    pub async fn create_api_key(&self, expiration: Timestamp) -> Result<NewApiKey, Error> {
        const OP: &str = "create API key";
        future_expiration(OP, expiration)?;
        self.api_shape().await?;
        let out: NewApiKeyEnvelope = self
            .call(Call::post(OP, &["api", "v1", "apikey"]).json(&ExpirationBody { expiration }))
            .await?;
        Ok(NewApiKey::from_key(out.api_key))
    }

    /// Every API key, by id and masked prefix.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, Error> {
        self.api_shape().await?;
        let out: ApiKeysEnvelope = self
            .call(Call::get("list API keys", &["api", "v1", "apikey"]))
            .await?;
        Ok(out.api_keys)
    }

    /// Sets the key's expiration to now. 0.27 knows keys only by prefix (and
    /// silently ignores an id), so an id is resolved through the listing there.
    pub async fn expire_api_key(&self, key: &ApiKeyRef) -> Result<(), Error> {
        const OP: &str = "expire API key";
        let (_, shape) = self.api_shape().await?;
        let call = Call::post(OP, &["api", "v1", "apikey", "expire"]);
        let call = match key {
            ApiKeyRef::Id(id) if shape.api_key_by_id => call.json(&IdBody { id: id.to_string() }),
            ApiKeyRef::Id(_) => call.json(&PrefixBody {
                prefix: &self.api_key_prefix(OP, key).await?,
            }),
            ApiKeyRef::Prefix(prefix) => call.json(&PrefixBody { prefix }),
        };
        self.call::<Empty>(call).await.map(drop)
    }

    /// Deletes an API key. The route takes the prefix in its path on every version,
    /// so an id is resolved to its (masked) prefix through the listing first.
    pub async fn delete_api_key(&self, key: &ApiKeyRef) -> Result<(), Error> {
        const OP: &str = "delete API key";
        self.api_shape().await?;
        let prefix = self.api_key_prefix(OP, key).await?;
        self.call::<Empty>(Call::new(OP, Method::DELETE, &["api", "v1", "apikey", &prefix]))
            .await
            .map(drop)
    }

    async fn api_key_prefix(&self, op: &'static str, key: &ApiKeyRef) -> Result<String, Error> {
        match key {
            ApiKeyRef::Prefix(p) => Ok(p.clone()),
            ApiKeyRef::Id(id) => self
                .list_api_keys()
                .await?
                .into_iter()
                .find(|k| k.id == *id)
                .map(|k| k.prefix)
                .ok_or_else(|| Error::NotFound {
                    op,
                    message: format!("no API key with id {id}"),
                }),
        }
    }
}

/// A key that expires in the past (or never, as the zero time) is dead on arrival.
fn future_expiration(op: &'static str, expiration: Timestamp) -> Result<(), Error> {
    if expiration <= Timestamp::now() {
        return Err(Error::InvalidInput {
            op,
            message: format!(
                "the expiration {expiration} is not in the future; the key would be dead on arrival"
            ),
        });
    }
    Ok(())
}

#[derive(Serialize)]
struct IdBody {
    id: String,
}

#[derive(Serialize)]
struct PrefixBody<'a> {
    prefix: &'a str,
}

/// 0.27's pre-auth key expiry: the owner's id and the full key.
#[derive(Serialize)]
struct UserAndKeyBody<'a> {
    user: String,
    key: &'a str,
}
