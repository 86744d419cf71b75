//! Loading the object with its maps pinned, and attaching the programs through pinned
//! bpf_links.
//!
//! On start the maps already pinned are re-opened (aya reuses a pinned map of the same name)
//! and the missing ones created and pinned. An interface whose link is already pinned gets the
//! new program swapped into that link atomically (`BPF_LINK_UPDATE`), so not one packet goes
//! unsteered across an agent restart or upgrade; an interface without one is attached afresh
//! and its link pinned. Links of interfaces no longer configured are unpinned, which detaches
//! them.
//!
//! On kernels before TCX (6.6), TC programs are netlink filters instead (see `pins`): an agent
//! restart or upgrade swaps the program inside the existing filter, which cls_bpf does
//! atomically too.
use super::maps::Maps;
use super::pins::{
    mode_name, unpin_link, LinkPin, Pins, TcAttach, NETLINK_HANDLE, NETLINK_PRIORITY,
};
use super::Error;
use crate::model::XdpMode;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{
    qdisc_add_clsact, NlOptions, SchedClassifierLink, TcAttachOptions, TcError,
};
use aya::programs::xdp::XdpLink;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};
use std::path::Path;
use tether_common::{MAP_SPECS, TC_POD_PROGRAM, TC_PROGRAM, TC_TO_POD_PROGRAM, XDP_PROGRAM};
use tracing::{info, warn};

/// `bpf_redirect_peer` arrived in Linux 5.10, XDP links in 5.9. TC programs are attached as
/// bpf_links (TCX) from [`TCX_KERNEL`] on, as netlink filters before.
pub const MIN_KERNEL: (u32, u32) = (5, 10);
pub const TCX_KERNEL: (u32, u32) = (6, 6);
/// Overrides the choice of TC attachment: `tcx` or `netlink` (the tests run the netlink path on
/// new kernels with it).
pub const TC_ATTACH_ENV: &str = "TETHER_TC_ATTACH";

/// The loaded programs. Dropping this closes the agent's handles only: the pinned links keep
/// the programs attached and the pinned maps keep their contents.
pub struct Kernel {
    ebpf: Ebpf,
    pins: Pins,
    tc: TcAttach,
}

impl Kernel {
    /// Loads `object` with the maps pinned under `pins` (re-opening those already there), and
    /// loads both programs into the kernel (the verifier runs here).
    pub fn load(object: &Path, pins: &Pins) -> Result<(Self, Maps), Error> {
        check_kernel()?;
        let tc = tc_attach()?;
        pins.prepare()?;
        pins.check_schema()?;
        let mut loader = EbpfLoader::new();
        for spec in &MAP_SPECS {
            loader.map_pin_path(spec.name, pins.map(spec.name));
        }
        let mut ebpf = loader.load_file(object).map_err(|source| Error::Load {
            object: object.to_path_buf(),
            source: Box::new(source),
        })?;
        let xdp: &mut Xdp = program(&mut ebpf, XDP_PROGRAM)?;
        xdp.load().map_err(|source| Error::Program {
            program: XDP_PROGRAM,
            action: "load",
            source,
        })?;
        for name in [TC_PROGRAM, TC_TO_POD_PROGRAM, TC_POD_PROGRAM] {
            let tc: &mut SchedClassifier = program(&mut ebpf, name)?;
            tc.load().map_err(|source| Error::Program {
                program: name,
                action: "load",
                source,
            })?;
        }
        let maps = Maps::take(&mut ebpf)?;
        Ok((
            Self {
                ebpf,
                pins: pins.clone(),
                tc,
            },
            maps,
        ))
    }

    /// Makes the pinned attachments exactly XDP (in `mode`) and, with `to_pod`, the peer-path
    /// TC program on the ingress, and the reply TC program on the egress of `interfaces`,
    /// replacing the programs in links that already exist. Returns a line per change, for the
    /// log.
    pub fn attach(
        &mut self,
        interfaces: &[String],
        mode: XdpMode,
        to_pod: bool,
    ) -> Result<Vec<String>, Error> {
        let mut changes = Vec::new();
        // Links that must go first: other interfaces, and XDP in the other mode (a link cannot
        // change mode, and an interface takes one XDP link).
        for (path, link) in self.pins.links() {
            let keep = match &link {
                LinkPin::Xdp { mode: pinned, .. } => *pinned == mode,
                LinkPin::Tc { .. } => true,
                LinkPin::ToPod { .. } => to_pod,
                // Pod interfaces are `attach_pods`' business.
                LinkPin::FromPod { .. } => continue,
            } && interfaces.iter().any(|i| i == link.interface());
            if !keep {
                unpin_link(&path, &link)?;
                changes.push(format!("detached {}", link.file_name()));
            }
        }
        for interface in interfaces {
            let xdp_pin = LinkPin::Xdp {
                interface: interface.clone(),
                mode,
            };
            let tc_pin = LinkPin::Tc {
                interface: interface.clone(),
            };
            if to_pod {
                let to_pod_pin = LinkPin::ToPod {
                    interface: interface.clone(),
                };
                // The TC ingress program first: the XDP program's marks need it.
                changes.push(self.attach_tc(&to_pod_pin, interface)?);
            }
            changes.push(self.attach_xdp(&xdp_pin, interface, mode)?);
            changes.push(self.attach_tc(&tc_pin, interface)?);
        }
        Ok(changes)
    }

    /// Makes the pinned attachments of the pod-interface reply program exactly the ingress of
    /// `pods`: new pod interfaces get it, links of interfaces gone or no longer matched are
    /// unpinned (a link whose interface was deleted is defunct already). With
    /// `replace_programs` (the first call of a started agent, which may be an upgrade) the
    /// links kept get the loaded program swapped in. Returns a line per change.
    pub fn attach_pods(
        &mut self,
        pods: &[(&str, u32)],
        replace_programs: bool,
    ) -> Result<Vec<String>, Error> {
        let mut changes = Vec::new();
        let mut attached = Vec::new();
        for (path, link) in self.pins.links() {
            if let LinkPin::FromPod { interface, ifindex } = &link {
                if pods.contains(&(interface.as_str(), *ifindex)) {
                    if replace_programs {
                        changes.push(self.attach_tc(&link, interface)?);
                    }
                    attached.push((interface.clone(), *ifindex));
                } else {
                    unpin_link(&path, &link)?;
                    changes.push(format!("detached {}", link.file_name()));
                }
            }
        }
        for &(pod, ifindex) in pods {
            if !attached.iter().any(|(a, i)| a == pod && *i == ifindex) {
                let pin = LinkPin::FromPod {
                    interface: pod.to_owned(),
                    ifindex,
                };
                changes.push(self.attach_tc(&pin, pod)?);
            }
        }
        Ok(changes)
    }

    fn attach_xdp(
        &mut self,
        pin: &LinkPin,
        interface: &str,
        mode: XdpMode,
    ) -> Result<String, Error> {
        let path = self.pins.link(pin);
        let program: &mut Xdp = program(&mut self.ebpf, XDP_PROGRAM)?;
        if path.exists() {
            let replaced = PinnedLink::from_pin(&path)
                .map_err(|error| crate::report::Chain(&error).to_string())
                .and_then(|pinned| {
                    XdpLink::try_from(FdLink::from(pinned))
                        .map_err(|error| crate::report::Chain(&error).to_string())
                })
                .and_then(|link| {
                    program
                        .attach_to_link(link)
                        .map_err(|error| crate::report::Chain(&error).to_string())
                });
            match replaced {
                Ok(id) => {
                    // The link stays pinned; the agent needs no handle to it.
                    drop(program.take_link(id));
                    return Ok(format!(
                        "XDP ({}) on {interface}: program replaced in the pinned link",
                        mode_name(mode)
                    ));
                }
                Err(error) => {
                    // A link whose interface went away is defunct: start over.
                    warn!(interface, %error, "the pinned XDP link cannot take the new program; attaching afresh");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let aya_mode = match mode {
            XdpMode::Native => aya::programs::XdpMode::Driver,
            XdpMode::Skb => aya::programs::XdpMode::Skb,
        };
        let attach_error = |source| Error::Attach {
            program: XDP_PROGRAM,
            interface: interface.to_owned(),
            source,
        };
        let id = program.attach(interface, aya_mode).map_err(attach_error)?;
        let link = program.take_link(id).map_err(attach_error)?;
        let link = FdLink::try_from(link).map_err(|_| Error::NoBpfLink {
            what: "XDP",
            interface: interface.to_owned(),
        })?;
        link.pin(&path).map_err(|source| Error::Pin {
            path: path.clone(),
            source,
        })?;
        info!(interface, mode = mode_name(mode), "XDP attached");
        Ok(format!(
            "XDP ({}) on {interface}: attached and pinned",
            mode_name(mode)
        ))
    }

    /// A TC program: the reply program on an uplink's egress ([`LinkPin::Tc`]) or a pod
    /// interface's ingress ([`LinkPin::FromPod`]), the peer-path program on an uplink's ingress
    /// ([`LinkPin::ToPod`]).
    fn attach_tc(&mut self, pin: &LinkPin, interface: &str) -> Result<String, Error> {
        // An attachment made the other way (the kernel or the override changed) goes first.
        let other = match self.tc {
            TcAttach::Tcx => self.pins.netlink_record(pin),
            TcAttach::Netlink => self.pins.link(pin),
        };
        if other.exists() {
            unpin_link(&other, pin)?;
        }
        match self.tc {
            TcAttach::Tcx => self.attach_tcx(pin, interface),
            TcAttach::Netlink => self.attach_netlink(pin, interface),
        }
    }

    fn attach_tcx(&mut self, pin: &LinkPin, interface: &str) -> Result<String, Error> {
        let (name, attach_type, hook) = tc_program(pin);
        let path = self.pins.link(pin);
        let program: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        if path.exists() {
            let replaced = PinnedLink::from_pin(&path)
                .map_err(|error| crate::report::Chain(&error).to_string())
                .and_then(|pinned| {
                    SchedClassifierLink::try_from(FdLink::from(pinned))
                        .map_err(|error| crate::report::Chain(&error).to_string())
                })
                .and_then(|link| {
                    program
                        .attach_to_link(link)
                        .map_err(|error| crate::report::Chain(&error).to_string())
                });
            match replaced {
                Ok(id) => {
                    drop(program.take_link(id));
                    return Ok(format!(
                        "{hook} on {interface}: program replaced in the pinned link"
                    ));
                }
                Err(error) => {
                    warn!(interface, %error, "the pinned TC link cannot take the new program; attaching afresh");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let attach_error = |source| Error::Attach {
            program: name,
            interface: interface.to_owned(),
            source,
        };
        let id = program
            .attach_with_options(
                interface,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(attach_error)?;
        let link = program.take_link(id).map_err(attach_error)?;
        let link = FdLink::try_from(link).map_err(|_| Error::NoBpfLink {
            what: "TC",
            interface: interface.to_owned(),
        })?;
        link.pin(&path).map_err(|source| Error::Pin {
            path: path.clone(),
            source,
        })?;
        info!(interface, hook, "TC attached");
        Ok(format!("{hook} on {interface}: attached and pinned"))
    }

    /// A TC program as a netlink filter with tether's priority and handle on the clsact qdisc.
    fn attach_netlink(&mut self, pin: &LinkPin, interface: &str) -> Result<String, Error> {
        let (name, attach_type, hook) = tc_program(pin);
        let attach_error = |source: aya::programs::ProgramError| Error::Attach {
            program: name,
            interface: interface.to_owned(),
            source,
        };
        match qdisc_add_clsact(interface) {
            Ok(()) => {}
            // Ours from before, or another program's: filters can share it.
            Err(TcError::NetlinkError(error)) if error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(error) => return Err(attach_error(error.into())),
        }
        let program: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        // Our filter there already (a restart or an upgrade): the program is swapped inside it.
        // Without one, the kernel refuses the swap and the filter is created.
        let replaced = SchedClassifierLink::attached(
            interface,
            attach_type,
            NETLINK_PRIORITY,
            NETLINK_HANDLE,
            None,
        )
        .ok()
        .and_then(|filter| program.attach_to_link(filter).ok());
        let (id, what) = match replaced {
            Some(id) => (id, "program replaced in the filter"),
            None => {
                let options = TcAttachOptions::Netlink(NlOptions {
                    priority: NETLINK_PRIORITY,
                    handle: NETLINK_HANDLE,
                    classid: None,
                });
                let id = program
                    .attach_with_options(interface, attach_type, options)
                    .map_err(attach_error)?;
                (id, "attached as a netlink filter")
            }
        };
        // The filter outlives the agent like a pinned link: the link object would delete it
        // when dropped.
        std::mem::forget(program.take_link(id).map_err(attach_error)?);
        let record = self.pins.netlink_record(pin);
        match std::fs::create_dir(&record) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(Error::Io {
                    what: format!("record {}", record.display()),
                    source,
                })
            }
        }
        info!(interface, hook, "TC attached (netlink)");
        Ok(format!("{hook} on {interface}: {what}"))
    }
}

/// The program, hook and hook name of a TC attachment.
fn tc_program(pin: &LinkPin) -> (&'static str, TcAttachType, &'static str) {
    let name = match pin {
        LinkPin::FromPod { .. } => TC_POD_PROGRAM,
        LinkPin::ToPod { .. } => TC_TO_POD_PROGRAM,
        LinkPin::Tc { .. } | LinkPin::Xdp { .. } => TC_PROGRAM,
    };
    match pin.tc_hook() {
        Some(TcAttachType::Ingress) => (name, TcAttachType::Ingress, "TC ingress"),
        _ => (name, TcAttachType::Egress, "TC egress"),
    }
}

/// TCX where the kernel has it, netlink filters before; [`TC_ATTACH_ENV`] overrides.
fn tc_attach() -> Result<TcAttach, Error> {
    match std::env::var(TC_ATTACH_ENV).ok().as_deref() {
        Some("tcx") => return Ok(TcAttach::Tcx),
        Some("netlink") => return Ok(TcAttach::Netlink),
        Some(other) => return Err(Error::TcAttachSetting(other.to_owned())),
        None => {}
    }
    let (major, minor) = TCX_KERNEL;
    Ok(match KernelVersion::current() {
        Ok(version) if version < KernelVersion::new(major as u8, minor as u8, 0) => {
            info!(%version, "no TCX before Linux {major}.{minor}: TC programs are netlink filters");
            TcAttach::Netlink
        }
        _ => TcAttach::Tcx,
    })
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(Error::MissingProgram(name))?;
    program.try_into().map_err(|source| Error::Program {
        program: name,
        action: "open",
        source,
    })
}

fn check_kernel() -> Result<(), Error> {
    let (major, minor) = MIN_KERNEL;
    match KernelVersion::current() {
        Ok(version) if version < KernelVersion::new(major as u8, minor as u8, 0) => {
            Err(Error::KernelTooOld {
                found: version.to_string(),
            })
        }
        // Unknown: let the attach calls say what is missing.
        _ => Ok(()),
    }
}
