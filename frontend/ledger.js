// The ledger pages (credits, node dashboard, payout review queue): draw their charts.
import { drawAll } from "./charts.js";

drawAll();
