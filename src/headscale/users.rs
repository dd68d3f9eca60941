//! Users: list, find, create, delete.

use super::client::{Call, Client};
use super::error::Error;
use super::models::{CreateUserBody, Empty, User, UserEnvelope, UserId, UsersEnvelope};
use reqwest::Method;

impl Client {
    /// Every user, sorted by id.
    pub async fn list_users(&self) -> Result<Vec<User>, Error> {
        self.api_shape().await?;
        let out: UsersEnvelope = self.call(Call::get("list users", &["api", "v1", "user"])).await?;
        Ok(out.users)
    }

    /// The user called `name`, if there is one.
    pub async fn find_user(&self, name: &str) -> Result<Option<User>, Error> {
        self.api_shape().await?;
        let out: UsersEnvelope = self
            .call(Call::get("find user", &["api", "v1", "user"]).query("name", name))
            .await?;
        Ok(out.users.into_iter().find(|u| u.name == name))
    }

    /// Creates a user. 0.27–0.29 do not validate the name at all (an empty one
    /// becomes the user's id), so an empty name is refused here.
    pub async fn create_user(&self, name: &str) -> Result<User, Error> {
        const OP: &str = "create user";
        if name.trim().is_empty() {
            return Err(Error::InvalidInput {
                op: OP,
                message: "the user name is empty".into(),
            });
        }
        self.api_shape().await?;
        let body = CreateUserBody {
            name,
            display_name: None,
            email: None,
        };
        let out: UserEnvelope = self
            .call(Call::post(OP, &["api", "v1", "user"]).json(&body))
            .await?;
        Ok(out.user)
    }

    /// Deletes a user. Fails with [`Error::Conflict`] while the user owns nodes (it
    /// also deletes the user's pre-auth keys).
    pub async fn delete_user(&self, id: UserId) -> Result<(), Error> {
        self.api_shape().await?;
        let id = id.to_string();
        self.call::<Empty>(Call::new(
            "delete user",
            Method::DELETE,
            &["api", "v1", "user", &id],
        ))
        .await
        .map(drop)
    }
}
