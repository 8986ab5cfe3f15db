package podnet

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ethtool_value as SIOCETHTOOL expects it.
type ethtoolValue struct {
	cmd  uint32
	data uint32
}

type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data uintptr
	_    [16]byte // pad to sizeof(struct ifreq)
}

const ethtoolSTXCSUM = 0x17 // ETHTOOL_STXCSUM

// disableTxChecksum turns TX checksum offload off on ifName in the calling
// thread's network namespace. The userspace (netdev) datapath forwards
// packets as raw frames and does not complete CHECKSUM_PARTIAL checksums,
// so a veth that leaves them to "hardware" would send bad TCP checksums.
// One ioctl instead of an ethtool process per pod.
func disableTxChecksum(ifName string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	val := ethtoolValue{cmd: ethtoolSTXCSUM, data: 0}
	var req ifreqData
	copy(req.name[:unix.IFNAMSIZ-1], ifName)
	req.data = uintptr(unsafe.Pointer(&val))
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&req))); errno != 0 {
		return fmt.Errorf("%s: disable tx checksum offload: %w", ifName, errno)
	}
	return nil
}

// DisableTxChecksum turns TX checksum offload off on ifName in the calling
// thread's network namespace (see disableTxChecksum): for other interfaces
// on a netdev bridge than pods' veths, e.g. the agent's HyperBus port.
func DisableTxChecksum(ifName string) error { return disableTxChecksum(ifName) }
