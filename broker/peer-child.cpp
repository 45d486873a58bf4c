#include "broker/peer-child.h"

namespace spicebox::broker {

ChildPeer::Decoded decodeChildHello(ipc::ChildHello::Reader hello, uint32_t expectedVersion) {
  ChildPeer::Decoded d;
  if (hello.getProtocolVersion() != expectedVersion) {
    d.refusal = "protocol version " + std::to_string(hello.getProtocolVersion()) + ", expected " +
                std::to_string(expectedVersion) + " (mismatched binaries? reinstall spicebox)";
    return d;
  }
  switch (hello.getSandboxLevel()) {
    case ipc::SandboxLevel::OFF:
      d.hello.sandboxLevel = sandbox::Level::Off;
      break;
    case ipc::SandboxLevel::PARTIAL:
      d.hello.sandboxLevel = sandbox::Level::Partial;
      break;
    case ipc::SandboxLevel::FULL:
      d.hello.sandboxLevel = sandbox::Level::Full;
      break;
    default:
      d.refusal =
          "unknown sandbox level " + std::to_string(static_cast<unsigned>(hello.getSandboxLevel()));
      return d;
  }
  auto missing = hello.getSandboxMissing();
  if (missing.size() > MAX_SANDBOX_MISSING_ENTRIES) {
    d.refusal = "sandbox report lists " + std::to_string(missing.size()) +
                " missing steps, at most " + std::to_string(MAX_SANDBOX_MISSING_ENTRIES) +
                " allowed";
    return d;
  }
  for (auto text : missing) {
    if (text.size() > MAX_SANDBOX_MISSING_TEXT) {
      d.refusal = "sandbox report entry of " + std::to_string(text.size()) + " bytes, at most " +
                  std::to_string(MAX_SANDBOX_MISSING_TEXT) + " allowed";
      return d;
    }
    d.hello.sandboxMissing.emplace_back(text.cStr(), text.size());
  }
  d.kind = ChildPeer::Decoded::Kind::Hello;
  return d;
}

}  // namespace spicebox::broker
