"""All models, imported here so Alembic and the app see every table."""

from .campaign import (
    CAMPAIGN_STATES,
    DELIVERY_STATES,
    ENCODINGS,
    FINAL_STATES,
    BounceMessage,
    Campaign,
    Delivery,
    DeliveryEvent,
    DispatchBatch,
    campaign_domains,
    campaign_exclude_lists,
    campaign_lists,
    campaign_servers,
    campaign_tracking_domains,
)
from .audit import AuditEntry
from .quota import QUOTA_FIELDS, UserLetterCount, UserQuota
from .server_share import ServerShare
from .campaign_count import CampaignCount
from .campaign_figures import CampaignBreakdown, CampaignMinute
from .daemon_lease import DaemonLease
from .domain import DMARC_POLICIES, DOMAIN_KINDS, TSIG_ALGORITHMS, Domain
from .import_job import IMPORT_STATES, ImportJob
from .mailing_list import MailingList, Recipient, Suppression
from .provider_limit import ServerProviderLimit, ServerProviderTable
from .token_cutoff import ShortTokenCutoff
from .test_letter import TestLetter
from .tracking import CampaignLink, Click, Open
from .server import JOB_KINDS, JOB_STATES, READY_STATES, ProvisionJob, Server, ServerEvent, ServerIP, ServerRateLimit
from .user import TOKEN_SCOPES, ApiRateBucket, ApiToken, LoginThrottle, User

__all__ = [
    "AuditEntry", "QUOTA_FIELDS", "UserLetterCount", "UserQuota", "ServerShare",
    "ApiRateBucket", "ApiToken", "LoginThrottle", "TOKEN_SCOPES", "BounceMessage", "CAMPAIGN_STATES", "Campaign", "CampaignCount", "CampaignBreakdown", "CampaignMinute", "CampaignLink", "Click", "DaemonLease",
    "Open", "campaign_tracking_domains", "DELIVERY_STATES", "Delivery",
    "DeliveryEvent", "DispatchBatch", "DMARC_POLICIES", "DOMAIN_KINDS", "Domain", "TSIG_ALGORITHMS", "ENCODINGS", "FINAL_STATES", "IMPORT_STATES", "ImportJob", "JOB_KINDS", "JOB_STATES", "MailingList",
    "ProvisionJob", "READY_STATES", "Recipient",
    "Server", "ServerEvent", "ShortTokenCutoff", "ServerIP", "ServerProviderLimit", "ServerProviderTable", "ServerRateLimit", "Suppression", "TestLetter", "User", "campaign_domains", "campaign_exclude_lists",
    "campaign_lists", "campaign_servers",
]
