//! The primary a set of sentinels names, when `sink.redis.tls.serverName` is set: the redis
//! crate's own Sentinel lookup cannot take the resolver that maps the server name to the
//! announced address (`server_name.rs`), so the sink asks the sentinels itself.

use std::time::Duration;

use redis::sentinel::SentinelClient;
use redis::{ConnectionAddr, Role};

use super::connection::{self, Target};
use super::server_name::redirect;
use super::SinkError;
use crate::config::{RedisSentinelConfig, RedisSinkConfig};

/// The primary the sentinels name, reached at its announced address but verified against
/// `sink.redis.tls.serverName`: asks one reachable sentinel (`SENTINEL
/// get-master-addr-by-name`), then checks with `ROLE` that the server there is a primary (a
/// sentinel may still name a demoted one right after a failover).
pub(crate) async fn sentinel_primary(
    sentinels: &mut SentinelClient,
    sentinel: &RedisSentinelConfig,
    cfg: &RedisSinkConfig,
    server_name: &str,
    timeout: Duration,
) -> Result<Target, SinkError> {
    let refused = |e: redis::RedisError| match connection::refusal(&e, cfg) {
        Some(reason) => SinkError::Config(format!("sentinels: {reason}")),
        None => SinkError::Unavailable(format!("sentinels: {e}")),
    };
    let ask = async {
        let client = sentinels.async_get_sentinel_client().await?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&sentinel.master_name)
            .query_async::<Option<(String, u16)>>(&mut conn)
            .await
    };
    let answer = tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| SinkError::timeout("asking the sentinels for the primary", timeout))?
        .map_err(refused)?;
    let Some((host, port)) = answer else {
        return Err(SinkError::Unavailable(format!(
            "sentinels: no primary named {:?}",
            sentinel.master_name
        )));
    };
    let info = connection::connection_info(cfg)?.set_addr(ConnectionAddr::TcpTls {
        host,
        port,
        insecure: false,
        tls_params: None,
    });
    let (info, redirect) = redirect(info, server_name)?;
    let target = connection::target_with_tls(info, Some(redirect), cfg)?;
    let role = async {
        let mut conn = target.connect(timeout).await?;
        redis::cmd("ROLE").query_async::<Role>(&mut conn).await
    };
    match tokio::time::timeout(timeout, role).await {
        Err(_) => Err(SinkError::timeout("checking the primary's role", timeout)),
        Ok(Err(e)) => Err(connection::explain(e, cfg)),
        Ok(Ok(Role::Primary { .. })) => Ok(target),
        Ok(Ok(_)) => Err(SinkError::Unavailable(format!(
            "sentinels name {} as the primary, but it is not one (yet)",
            target.address()
        ))),
    }
}
