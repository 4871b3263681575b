//! A real reverse proxy: Debian's nginx (`scripts/install-tools`), in front of a hub with
//! nothing but `proxy_pass`, so its defaults apply (responses buffered, HTTP/1.0 upstream).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::*;

pub struct Nginx {
    pub addr: SocketAddr,
    _process: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx in the foreground, one process, its files in a directory of its own,
    /// proxying every path to `upstream`; returns once it accepts connections.
    pub async fn start(upstream: SocketAddr) -> Nginx {
        let dir = std::env::temp_dir().join(unique("wskafka-nginx"));
        std::fs::create_dir_all(&dir).unwrap();
        // A port nobody holds now; nginx binds it a moment later.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let d = dir.display();
        let config = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{}}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             server {{\n    listen {addr};\n    location / {{ proxy_pass http://{upstream}; }}\n  }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        let process = Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting nginx: run scripts/install-tools, which installs it");
        eventually(format!("nginx listening on {addr}"), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        Nginx {
            addr,
            _process: process,
            dir,
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
