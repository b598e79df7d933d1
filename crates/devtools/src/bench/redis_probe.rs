//! A minimal RESP2 client for the benchmarks' observers: one TCP connection to
//! redis-server, one command at a time, answers that are arrays of bulk strings (`ZRANGE`,
//! `ZRANGE … WITHSCORES`). It reads the limiter's keys from outside, as an operator's
//! `redis-cli` would, without going through limiter-redis (whose view is what is measured),
//! and without a process per poll, which a 20 ms `redis-cli` loop would cost on 2 cores.

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One connection to redis-server.
pub(crate) struct RedisProbe {
    stream: BufReader<TcpStream>,
}

impl RedisProbe {
    /// Connects to `redis://127.0.0.1:PORT`.
    pub(crate) async fn connect(url: &str) -> Result<RedisProbe> {
        let port = super::rig::redis_port(url)?;
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connect to {url}"))?;
        tcp.set_nodelay(true)?;
        Ok(RedisProbe {
            stream: BufReader::new(tcp),
        })
    }

    /// Sends `args` as one command and returns its answer, which must be an array of bulk
    /// strings (a nil array is empty).
    pub(crate) async fn strings(&mut self, args: &[&str]) -> Result<Vec<String>> {
        let mut cmd = format!("*{}\r\n", args.len());
        for a in args {
            cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.stream.get_mut().write_all(cmd.as_bytes()).await?;
        let head = self.line().await?;
        let n: i64 = match head.strip_prefix('*') {
            Some(n) => n
                .parse()
                .with_context(|| format!("bad array header {head:?}"))?,
            None => bail!("redis answered {head:?} to {args:?}, expected an array"),
        };
        let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        for _ in 0..n.max(0) {
            let head = self.line().await?;
            let len: usize = head
                .strip_prefix('$')
                .and_then(|l| l.parse().ok())
                .with_context(|| format!("expected a bulk string, got {head:?}"))?;
            let mut buf = vec![0; len + 2];
            self.stream.read_exact(&mut buf).await?;
            buf.truncate(len);
            out.push(String::from_utf8(buf)?);
        }
        Ok(out)
    }

    /// The members of a sorted set with their scores (`ZRANGE key 0 -1 WITHSCORES`).
    pub(crate) async fn zrange_with_scores(&mut self, key: &str) -> Result<Vec<(String, f64)>> {
        let flat = self
            .strings(&["ZRANGE", key, "0", "-1", "WITHSCORES"])
            .await?;
        flat.chunks(2)
            .map(|pair| match pair {
                [member, score] => Ok((member.clone(), score.parse()?)),
                _ => bail!("odd ZRANGE WITHSCORES answer"),
            })
            .collect()
    }

    /// The members of a sorted set (`ZRANGE key 0 -1`).
    pub(crate) async fn zrange(&mut self, key: &str) -> Result<Vec<String>> {
        self.strings(&["ZRANGE", key, "0", "-1"]).await
    }

    async fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            bail!("redis closed the connection");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}

/// The limiter's key `{talkgate:<name>}:<suffix>` (see `limiter_redis::scripts`).
pub(crate) fn key(limiter: &str, suffix: &str) -> String {
    format!("{{talkgate:{limiter}}}:{suffix}")
}

/// The instance id of a token `<instance id hex>-<n>`.
pub(crate) fn owner(token: &str) -> &str {
    token.split_once('-').map_or(token, |(id, _)| id)
}
