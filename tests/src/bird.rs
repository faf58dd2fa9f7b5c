//! BIRD 2 in a test: started in a namespace with its own configuration,
//! control socket and log under `/tmp/hola-test-bird-<name>`, tracked as a
//! child process and stopped on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netlab::bird;

pub struct Bird {
    pub name: String,
    pub ns: String,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Bird {
    /// Writes `config` (with `@DIR@` replaced by its directory), checks it
    /// with `bird -p`, starts `bird -f` in namespace `ns` and waits until
    /// its control socket answers.
    pub fn start(name: &str, ns: &str, config: &str) -> Self {
        let dir = PathBuf::from(format!("/tmp/hola-test-bird-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("BIRD's test directory");
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config.replace("@DIR@", &dir.display().to_string()))
            .expect("writing bird.conf");
        let check = Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&conf)
            .output()
            .expect("bird is not installed: `cargo xtask setup` installs Debian's bird2");
        assert!(
            check.status.success(),
            "BIRD refuses {}: {}{}",
            conf.display(),
            String::from_utf8_lossy(&check.stderr),
            String::from_utf8_lossy(&check.stdout)
        );
        let mut b = Bird {
            name: name.into(),
            ns: ns.into(),
            dir,
            child: None,
        };
        b.spawn();
        b
    }

    /// Starts (again) `bird -f` with the configuration written by `start`.
    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("bird.out")).expect("BIRD's output file");
        // nsenter execs bird: the child's PID is BIRD's.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .args(["bird", "-f", "-c"])
            .arg(self.dir.join("bird.conf"))
            .arg("-s")
            .arg(self.socket())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting bird");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while bird::birdc(&self.socket(), &["show", "status"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "BIRD {} did not answer on {} within 10 s: {}",
                self.name,
                self.socket().display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", read("bird.out"), read("bird.log"))
    }

    /// `birdc ARGS...` on this BIRD, panicking with BIRD's words on failure.
    pub fn birdc(&self, args: &[&str]) -> String {
        bird::birdc(&self.socket(), args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The state of BGP session `name` ("Established", ...).
    pub fn session(&self, name: &str) -> Option<String> {
        bird::session_state(&self.birdc(&["show", "protocols"]), name)
    }

    /// Waits until every session of `names` is Established.
    pub fn wait_established(&self, names: &[String], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.birdc(&["show", "protocols"]);
            if names
                .iter()
                .all(|n| bird::session_state(&out, n).as_deref() == Some("Established"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "BIRD {}: sessions {names:?} not Established within {timeout:?}:\n{out}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills BIRD at once (SIGKILL): its sessions end without a word.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
    }
}
