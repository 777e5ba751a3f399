// A sample app's entry: the client from its npm package, as a bundler resolves it.
import { type Decision, HubClient, PROTOCOL, Status } from "platform-hub-client";

const hub = new HubClient({ url: "wss://hub.example.com/ws", channelName: null });
hub.addEventListener("state", (event) => {
  document.title = `v${event.detail.version} (protocol ${PROTOCOL})`;
});
hub.addEventListener("status", (event) => {
  if (event.detail.status === Status.ENDED) location.assign("/login");
});
export async function choose(platform: number): Promise<Decision> {
  return hub.switchPlatform(platform);
}
